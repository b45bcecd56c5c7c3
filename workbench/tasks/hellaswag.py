"""HellaSwag: commonsense sentence endings, 4 per context.

Records are {"activity_label", "ctx", "endings"[4], "label"}; the context is "label: ctx" and each
ending continues it after a space. The eval scores the likelihood of each ending (and for chat
models the letter, base.letter_prompt); a completion that names a letter is right when it is the
gold one (tasks.answers.chosen_letter), which is also the reward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.errors import BadInput
from workbench.evals.common import require
from workbench.tasks.answers import letter_correct
from workbench.tasks.base import Item, check_choices, letter_reward, read_records

correct = letter_correct
reward = letter_reward


def load(path: str | Path) -> list[Item]:
    """{"activity_label", "ctx", "endings"[4], "label"}: the context is "label: ctx"."""
    return read_records(path, _item)


def _item(record: dict[str, Any], where: str) -> Item:
    ctx = require(record, "ctx", str, where)
    label = record.get("activity_label", "")
    if not isinstance(label, str):
        raise BadInput(f"{where}: field 'activity_label' must be str")
    endings = require(record, "endings", list, where)
    gold = require(record, "label", int, where)
    check_choices(endings, gold, where, expected=4)
    context = f"{label}: {ctx}" if label else ctx
    return Item(context=context, choices=endings, gold=gold, question=context, where=where)
