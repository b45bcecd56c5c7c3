"""tool: synthetic word problems whose operands are too big to add in one's head (difficulty 2-3,
operands up to 999), so the calculator is the way.

Right, as for arith, means the right final number (the calculator's output counts as the answer).
The reward adds tool use to that: 1.0 for a right answer with at least one calculator call, every
call having produced a result (tasks.answers.tool_used_correctly); 0.5 for a right answer without
working tool use; 0.0 for a wrong one. A call is a special token in the completion's ids, never
text that spells the markers (tasks.answers.parse_tokens).
"""

from __future__ import annotations

from workbench.tasks import arith
from workbench.tasks.answers import parse, tool_used_correctly
from workbench.tasks.base import Completion, Task

TOOL_DIFFICULTY = (2, 3)
TOOL_MAX_OPERAND = 999

correct = arith.correct


def reward(completion: Completion, answer: str | float | int) -> float:
    parsed = parse(completion)
    if not correct(parsed, answer):
        return 0.0
    return 1.0 if tool_used_correctly(parsed) else 0.5


def training_task(seed: int, held_out: int) -> Task:
    return arith.synthetic_task("tool", seed, TOOL_DIFFICULTY, TOOL_MAX_OPERAND, reward, held_out)
