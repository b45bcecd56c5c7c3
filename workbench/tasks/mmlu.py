"""MMLU: four-choice questions over 57 subjects, one header-less CSV per subject.

Rows are question, A, B, C, D, answer letter, in files `<subject>_test.csv`. The eval scores the
likelihood of each choice after "Question: ...\\nAnswer:" (and for chat models the letter,
base.letter_prompt); a completion that names a letter is right when it is the gold one
(tasks.answers.chosen_letter), which is also the reward.
"""

from __future__ import annotations

from pathlib import Path

from workbench.errors import BadInput
from workbench.evals.common import iter_csv
from workbench.tasks.answers import letter_correct
from workbench.tasks.base import Item, letter_reward

correct = letter_correct
reward = letter_reward


def load(folder: str | Path) -> list[Item]:
    """Header-less CSVs `<subject>_test.csv`: question, A, B, C, D, answer letter. Items come out
    subject by subject in alphabetical order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"{folder}: MMLU folder not found (expected <subject>_test.csv files; is --data-dir right?)")
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise BadInput(f"{folder}: no MMLU .csv files")
    items = []
    for path in files:
        subject = path.stem.rsplit("_", 1)[0] if "_" in path.stem else path.stem
        for number, row in iter_csv(path):
            where = f"{path}:{number}"
            if len(row) != 6:
                raise BadInput(f"{where}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
            question, choices, answer = row[0], row[1:5], row[5].strip().upper()
            if answer not in ("A", "B", "C", "D"):
                raise BadInput(f"{where}: answer must be one of A, B, C, D, got {row[5]!r}")
            items.append(Item(context=f"Question: {question}\nAnswer:", choices=[c.strip() for c in choices],
                              gold="ABCD".index(answer), question=question, subject=subject, where=where))
    return items
