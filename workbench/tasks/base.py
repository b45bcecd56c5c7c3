"""What every task shares: a prompt with its known answer, a task as GRPO trains on it (a
deterministic stream of prompts, held-out prompts, a reward and a correctness test), mixtures of
tasks, and the multiple-choice item that ARC, MMLU and HellaSwag all read into.

A task's correctness and reward read the completion through tasks.answers (the parsed completion,
from token ids or from decoded text), exactly as its eval does; a task module defines its reward
from its eval's scoring, never from its own reading of the text.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from workbench.errors import BadInput
from workbench.evals.common import iter_jsonl
from workbench.tasks.answers import ParsedCompletion, letter_correct

Completion = str | ParsedCompletion
Record = TypeVar("Record")

TASK_SEED_OFFSET = 7919  # GRPO prompts come from a different stream than SFT's synthetic data
HELD_OUT_SEED_OFFSET = 104_729


@dataclass
class Prompt:
    messages: list[dict[str, Any]]
    answer: Any
    task: str = ""  # the task it came from, in a mixture


@dataclass
class Task:
    """A source of prompts (index -> Prompt, deterministic) and how to score a completion. A
    mixture has `parts`: each prompt is scored, and each part's held-out set evaluated, by its own
    task."""

    name: str
    prompt_at: Any  # callable(index) -> Prompt
    held_out: list[Prompt]
    reward_fn: Any  # callable(completion, answer) -> float in [0, 1]; completion: text or ParsedCompletion
    correct_fn: Any  # callable(completion, answer) -> bool
    parts: dict[str, Task] = field(default_factory=dict)

    def reward(self, completion, answer: Any) -> float:
        return float(self.reward_fn(completion, answer))

    def correct(self, completion, answer: Any) -> bool:
        return bool(self.correct_fn(completion, answer))

    def scorer_for(self, prompt: Prompt) -> Task:
        return self.parts.get(prompt.task, self)

    def evaluated(self) -> list[Task]:
        """The tasks whose held-out prompts are evaluated: the parts of a mixture, or itself."""
        return list(self.parts.values()) or [self]


def read_records(path: str | Path, read: Callable[[dict[str, Any], str], Record]) -> list[Record]:
    """read(record, "FILE:LINE") for each object of a JSON-lines file (which raises BadInput naming
    that place for a malformed one); BadInput when the file holds none."""
    records = [read(record, f"{path}:{number}") for number, record in iter_jsonl(Path(path))]
    if not records:
        raise BadInput(f"{path}: no records")
    return records


def prompt_tokens(tokenizer, messages: list[dict[str, Any]], plain: str, chat: bool) -> list[int]:
    """A prompt's token ids: the chat messages for a chat model (ending in <|assistant_start|>), else
    the plain text after <|bos|>, for a base model that has never seen the chat format."""
    if chat:
        return tokenizer.render_for_completion(messages)
    return [tokenizer.bos_id] + tokenizer.encode(plain)


def training_file(path: Path) -> Path:
    """A task's data file, which GRPO reads from [eval] data_dir: BadInput when it is missing."""
    if not path.exists():
        raise BadInput(f"{path}: missing (the [grpo] task reads it from [eval] data_dir)")
    return path


def shuffled_task(name: str, train: list[Prompt], held: list[Prompt], seed: int, reward_fn, correct_fn,
                  held_out: int) -> Task:
    """A task over a file's prompts: prompt i is the i-th of a seeded shuffle (cycling), held-out
    prompts the first `held_out` of another split."""
    order = list(range(len(train)))
    random.Random(f"grpo:{name}:{seed}").shuffle(order)

    def prompt_at(index: int) -> Prompt:
        return replace(train[order[index % len(order)]], task=name)

    return Task(name, prompt_at, [replace(p, task=name) for p in held[:held_out]], reward_fn, correct_fn)


def mixed_task(tasks: dict[str, Task], weights: dict[str, float], seed: int) -> Task:
    """Prompt i comes from a task drawn by weight with a generator seeded by (seed, i), and is that
    task's prompt i: a pure function of i, so a resumed run draws the same prompts."""
    names = list(tasks)
    total = sum(weights.values())
    edges = [sum(weights[n] for n in names[:k + 1]) / total for k in range(len(names))]

    def prompt_at(index: int) -> Prompt:
        u = random.Random(f"grpo-mix:{seed}:{index}").random()
        name = next((n for n, edge in zip(names, edges, strict=True) if u < edge), names[-1])
        return tasks[name].prompt_at(index)

    def unscored(text: str, answer: Any) -> float:
        raise AssertionError("a mixture scores each prompt with its own task (Task.scorer_for)")

    held = [prompt for task in tasks.values() for prompt in task.held_out]
    return Task("+".join(names), prompt_at, held, unscored, unscored, parts=dict(tasks))


# ---------------------------------------------------------------------------------------------
# multiple choice (ARC, MMLU, HellaSwag)

LETTERS = "ABCDEFGHIJ"


@dataclass
class Item:
    context: str  # what the model reads before a choice (plain-text, likelihood form)
    choices: list[str]
    gold: int
    question: str  # the bare question, for the chat (letter) form
    subject: str = ""  # MMLU subject
    delimiter: str = " "  # between context and choice
    where: str = field(default="", compare=False)  # FILE:LINE, for messages

    @property
    def gold_letter(self) -> str:
        return LETTERS[self.gold]


def check_choices(choices: Any, gold: Any, where: str, expected: int | None = None) -> None:
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise BadInput(f"{where}: choices must be a list of at least 2 strings")
    if len(choices) > len(LETTERS):
        raise BadInput(f"{where}: at most {len(LETTERS)} choices, got {len(choices)}")
    if expected is not None and len(choices) != expected:
        raise BadInput(f"{where}: expected {expected} choices, got {len(choices)}")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise BadInput(f"{where}: gold answer must be an index in 0..{len(choices) - 1}, got {gold!r}")


def letter_prompt(item: Item) -> list[dict[str, str]]:
    """The chat form of a multiple-choice item: the question and its choices as A, B, C, ..."""
    lines = [item.question.strip(), ""]
    lines += [f"{LETTERS[j]}. {choice}" for j, choice in enumerate(item.choices)]
    lines += ["", "Answer with the letter of the correct choice."]
    return [{"role": "user", "content": "\n".join(lines)}]


def letter_reward(completion: Completion, answer: str) -> float:
    """1.0 when the completion's chosen letter is the answer letter (tasks.answers.letter_correct,
    the eval's reading), else 0.0."""
    return 1.0 if letter_correct(completion, answer) else 0.0
