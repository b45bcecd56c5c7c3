"""HumanEval: write the body of a Python function; right when the function passes its tests.

Records are {"task_id", "prompt", "entry_point", "canonical_solution", "test"}. The model gets the
function's signature and docstring (as plain text for base models, as a chat message for chat
models). Its answer (the completion's text outside thoughts, tasks.answers) becomes code in one of
two ways:
- it contains (in a ``` block or not) a whole `def <entry_point>(...)`: the program is the prompt
  (for its imports and helpers) followed by that code, whose definition replaces the stub;
- otherwise it is the function's body continuing the prompt, cut at the first top-level
  "def"/"class"/"if"/"print"/"#" line, as in OpenAI's human-eval.
The program = that + the task's tests + `check(<entry_point>)`, run in the sandbox
(evals/sandbox.py) with a time and memory limit; the completion is right when the program exits 0,
and the reward is 1.0 then, else 0.0. Model output never runs outside the sandbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import BadInput
from workbench.evals.common import require
from workbench.evals.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, SandboxResult, run_program
from workbench.tasks.answers import parse
from workbench.tasks.base import Completion, read_records

STOP_SEQUENCES = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#"]
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|$)", re.S)


@dataclass
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str
    where: str = field(default="", compare=False)


def load(path: str | Path) -> list[Problem]:
    return read_records(path, _problem)


def _problem(record: dict[str, Any], where: str) -> Problem:
    fields = {key: require(record, key, str, where)
              for key in ("task_id", "prompt", "entry_point", "canonical_solution", "test")}
    if not fields["entry_point"].isidentifier():
        raise BadInput(f"{where}: entry_point {fields['entry_point']!r} is not a Python identifier")
    if "def check(" not in fields["test"]:
        raise BadInput(f"{where}: field 'test' does not define check(candidate)")
    return Problem(**fields, where=where)


def messages(problem: Problem) -> list[dict[str, str]]:
    """The chat prompt: the stub in a Python block, to be completed."""
    return [{"role": "user", "content": f"Complete this Python function:\n\n```python\n{problem.prompt}```"}]


def plain_prompt(problem: Problem) -> str:
    """The prompt for a base model: the stub itself, which its body continues."""
    return problem.prompt


def truncate_at_stops(code: str) -> str:
    cut = len(code)
    for stop in STOP_SEQUENCES:
        index = code.find(stop)
        if index != -1:
            cut = min(cut, index)
    return code[:cut]


def completion_code(problem: Problem, answer: str) -> str:
    """Python source that defines the function, from the model's answer (see the module doc)."""
    blocks = _CODE_BLOCK.findall(answer)
    code = blocks[0] if blocks else answer
    if re.search(rf"^[ \t]*def[ \t]+{re.escape(problem.entry_point)}[ \t]*\(", code, re.M):
        return problem.prompt + "\n" + code.strip("\n") + "\n"
    return problem.prompt + truncate_at_stops(code)


def assemble_program(problem: Problem, answer: str) -> str:
    return (completion_code(problem, answer) + "\n\n" + problem.test + "\n\n"
            + f"check({problem.entry_point})\n")


def run_tests(problem: Problem, completion: Completion, timeout: float = DEFAULT_TIMEOUT,
              memory_mb: int = DEFAULT_MEMORY_MB) -> SandboxResult:
    """The completion's program (its answer's code, the tests, the check) run in the sandbox."""
    return run_program(assemble_program(problem, parse(completion).answer), timeout, memory_mb)


def correct(completion: Completion, problem: Problem) -> bool:
    return run_tests(problem, completion).passed


def reward(completion: Completion, problem: Problem) -> float:
    return 1.0 if correct(completion, problem) else 0.0
