"""arith: the synthetic arithmetic word problems (data/synthetic.py) as a GRPO task.

Prompt i is problem i of a seeded stream, its difficulty (number of operations) taking turns over
ARITH_DIFFICULTY; held-out prompts come from another stream. A completion is right when its final
number equals the problem's answer, as for GSM8K (tasks.answers.number_correct); the reward is 1.0
for a right completion, else 0.0.
"""

from __future__ import annotations

from workbench.data.synthetic import problem_at
from workbench.tasks.answers import number_correct
from workbench.tasks.base import HELD_OUT_SEED_OFFSET, TASK_SEED_OFFSET, Completion, Prompt, Task

# Where a CPU-sized SFT model is partly right. Level 3 (three operations) it almost never solves
# and level 1 it soon always solves, and a group whose answers are all wrong or all right teaches
# nothing.
ARITH_DIFFICULTY = (1, 2)


def correct(completion: Completion, answer: str | float | int) -> bool:
    return number_correct(completion, answer)


def reward(completion: Completion, answer: str | float | int) -> float:
    return 1.0 if correct(completion, answer) else 0.0


def synthetic_task(name: str, seed: int, difficulty: tuple[int, int], max_operand: int | None, reward_fn,
                   held_out: int) -> Task:
    """A task over the synthetic problem stream (arith, tool): right means the right final number."""
    low, high = difficulty

    def prompt_at(index: int) -> Prompt:
        # Difficulties take turns, so every step sees the same mix and the reward curve shows
        # learning rather than which levels a step happened to draw.
        level = low + index % (high - low + 1)
        problem = problem_at(seed + TASK_SEED_OFFSET, index, level, max_operand)
        return Prompt(problem.prompt(), problem.answer, name)

    held = [problem_at(seed + HELD_OUT_SEED_OFFSET, i, difficulty, max_operand) for i in range(held_out)]
    return Task(name, prompt_at, [Prompt(p.prompt(), p.answer, name) for p in held], reward_fn, correct)


def training_task(seed: int, held_out: int) -> Task:
    return synthetic_task("arith", seed, ARITH_DIFFICULTY, None, reward, held_out)
