"""GSM8K: grade-school math word problems with a numeric answer.

A record is {"question", "answer"}, the answer a worked solution ending in "#### N". The prompt is
the question (a chat message for chat models, "Question: ...\\nAnswer:" for base models). A
completion is right when its final number (tasks.answers.final_number: after the last "####", else
the last number of the answer outside thoughts, the calculator's outputs included) equals N
numerically; the reward is 1.0 for a right completion, else 0.0. The eval (evals/gsm8k.py) and
GRPO's "gsm8k" task (train split, held out from the test split) both score with `correct`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import BadInput
from workbench.evals.common import require
from workbench.tasks.answers import normalize_number, number_correct
from workbench.tasks.base import Completion, Prompt, Task, read_records, shuffled_task, training_file


@dataclass
class Problem:
    question: str
    solution: str  # the reference solution text, ending in "#### N"
    answer: str  # N, normalised
    where: str = field(default="", compare=False)


def reference_answer(solution: str) -> str | None:
    """N of a reference solution "... #### N", normalised; None when it has no "####" line."""
    return normalize_number(solution.rsplit("####", 1)[1]) if "####" in solution else None


def load(path: str | Path) -> list[Problem]:
    """{"question", "answer"} per line; the answer ends in '#### N'."""
    return read_records(path, _problem)


def _problem(record: dict[str, Any], where: str) -> Problem:
    question = require(record, "question", str, where)
    solution = require(record, "answer", str, where)
    if "####" not in solution:
        raise BadInput(f"{where}: field 'answer' has no '#### <final answer>' line")
    answer = reference_answer(solution)
    if answer is None:
        raise BadInput(f"{where}: no number after '####' in field 'answer'")
    return Problem(question=question, solution=solution, answer=answer, where=where)


def messages(problem: Problem) -> list[dict[str, str]]:
    """The chat prompt: the question as one user turn."""
    return [{"role": "user", "content": problem.question}]


def plain_prompt(problem: Problem) -> str:
    """The prompt for a base model, which has never seen the chat format."""
    return f"Question: {problem.question}\nAnswer:"


def correct(completion: Completion, answer: str | float | int) -> bool:
    return number_correct(completion, answer)


def reward(completion: Completion, answer: str | float | int) -> float:
    return 1.0 if correct(completion, answer) else 0.0


def prompts(path: Path) -> list[Prompt]:
    return [Prompt(messages(problem), problem.answer) for problem in load(training_file(path))]


def training_task(data_dir: Path, seed: int, held_out: int) -> Task:
    """GRPO's "gsm8k": the train split's problems, held out from the test split."""
    folder = data_dir / "gsm8k"
    return shuffled_task("gsm8k", prompts(folder / "train.jsonl"), prompts(folder / "test.jsonl"), seed, reward,
                         correct, held_out)
