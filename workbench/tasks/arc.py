"""ARC (AI2 Reasoning Challenge): grade-school science questions with 3-5 choices.

Two file forms: llm-foundry's {"query": "Question: ...", "choices": [...], "gold": i}, which the
eval reads (arc-easy, arc-challenge: likelihood of each choice, and for chat models the letter),
and AI2's {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}, whose train split
GRPO's "arc" task trains on (ARC-Easy-Train, held out from ARC-Easy-Dev). Either becomes an Item;
the chat prompt lists the choices as letters (base.letter_prompt). A completion is right when its
chosen letter (tasks.answers.chosen_letter) is the gold one; the reward is 1.0 then, else 0.0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.errors import BadInput
from workbench.evals.common import require
from workbench.tasks.answers import letter_correct
from workbench.tasks.base import (
    Item,
    Prompt,
    Task,
    check_choices,
    letter_prompt,
    letter_reward,
    read_records,
    shuffled_task,
    training_file,
)

correct = letter_correct
reward = letter_reward


def load(path: str | Path) -> list[Item]:
    """llm-foundry ICL form: {"query": "Question: ...", "choices": [...], "gold": i}."""
    return read_records(path, _llm_foundry_item)


def _llm_foundry_item(record: dict[str, Any], where: str) -> Item:
    query = require(record, "query", str, where)
    choices = require(record, "choices", list, where)
    gold = require(record, "gold", int, where)
    check_choices(choices, gold, where)
    question = query.removeprefix("Question:").strip()
    # llm-foundry's ARC task uses the continuation delimiter "\nAnswer: ".
    return Item(context=f"{query}\nAnswer:", choices=choices, gold=gold, question=question, where=where)


def load_ai2(path: str | Path) -> list[Item]:
    """AI2 form: {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey": label}."""
    return read_records(path, _ai2_item)


def _ai2_item(record: dict[str, Any], where: str) -> Item:
    try:
        question = record["question"]
        stem = question["stem"]
        choices = [choice["text"] for choice in question["choices"]]
        gold = [choice["label"] for choice in question["choices"]].index(record["answerKey"])
    except (KeyError, TypeError, ValueError):
        raise BadInput(f"{where}: expected an AI2 ARC record {{question: {{stem, choices}}, answerKey}}") from None
    if not isinstance(stem, str):
        raise BadInput(f"{where}: field 'question.stem' must be str, got {type(stem).__name__}")
    check_choices(choices, gold, where)
    return Item(context=f"Question: {stem}\nAnswer:", choices=choices, gold=gold, question=stem, where=where)


def prompts(path: Path) -> list[Prompt]:
    """AI2 records as chat prompts listing the choices as letters; the answer is the gold letter."""
    return [Prompt(letter_prompt(item), item.gold_letter) for item in load_ai2(training_file(path))]


def training_task(data_dir: Path, seed: int, held_out: int) -> Task:
    """GRPO's "arc": ARC-Easy's train split, held out from its dev split."""
    folder = data_dir / "arc" / "ai2-format"
    return shuffled_task("arc", prompts(folder / "ARC-Easy-Train.jsonl"), prompts(folder / "ARC-Easy-Dev.jsonl"),
                         seed, reward, correct, held_out)
