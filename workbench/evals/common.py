"""What every eval task shares: reading eval files with file:line errors, the task registry,
--limit selection, and small helpers for running a model over token rows.

Nothing here imports torch at module level: the task modules' loaders and scorers (and their tests)
work without a model, so a perfect answer sheet can be scored in milliseconds.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import BadInput
from workbench.input_files import NestedTooDeeply, open_regular, parse_json

# task name -> (relative path under the eval data dir, chance level or None, one-line description)
TASKS: dict[str, tuple[str, float | None, str]] = {
    "bpb": ("", None, "bits per byte on the run's validation shards (lower is better)"),
    "arc-easy": ("arc/llm-foundry/arc_easy.jsonl", 0.25, "ARC-Easy, 4 choices, likelihood"),
    "arc-challenge": ("arc/llm-foundry/arc_challenge.jsonl", 0.25, "ARC-Challenge, 4 choices, likelihood"),
    "mmlu": ("mmlu/test", 0.25, "MMLU test, 57 subjects, 4 choices, likelihood"),
    "hellaswag": ("hellaswag/hellaswag_val.preprocessed.jsonl", 0.25, "HellaSwag val, 4 endings, likelihood"),
    "gsm8k": ("gsm8k/test.jsonl", 0.0, "GSM8K test, generation with the calculator, exact number"),
    "humaneval": ("humaneval/HumanEval.jsonl", 0.0, "HumanEval, generated code run against its tests, pass@1"),
    "core": ("", None, "CORE (DCLM, few-shot, centered) over [eval] core_bundle, or ARC + HellaSwag mapped into it"),
    "chatcore": ("", None, "ChatCORE: mean centered accuracy of ARC-Easy, ARC-Challenge, MMLU, GSM8K, HumanEval"),
}
MULTIPLE_CHOICE_TASKS = ("arc-easy", "arc-challenge", "mmlu", "hellaswag")
GENERATIVE_TASKS = ("gsm8k", "humaneval")
CHATCORE_TASKS = ("arc-easy", "arc-challenge", "mmlu", "gsm8k", "humaneval")
# Tasks whose headline is a score of their own, not an accuracy: the key holding it in a result.
SCORE_KEYS = {"bpb": "bpb", "core": "core", "chatcore": "chatcore"}

# A progress callback: (done, total) after each unit of work.
Progress = Callable[[int, int], None]


def no_progress(done: int, total: int) -> None:
    pass


def parse_tasks(text: str | list[str]) -> list[str]:
    """'bpb,arc-easy' (or a list) -> validated task names in the given order; 'all' is every task."""
    names = text if isinstance(text, list) else [part for part in text.split(",")]
    names = [name.strip().lower() for name in names if name.strip()]
    if names == ["all"]:
        return list(TASKS)
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        import difflib

        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(TASKS), n=1)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise BadInput(f"--tasks: unknown task {', '.join(hints)}; known: {', '.join(TASKS)}")
    if not names:
        raise BadInput(f"--tasks: no task given; known: {', '.join(TASKS)}")
    # chatcore is computed from its five tasks: they run first (those not already asked for).
    expanded = [part for name in names
                for part in ([*CHATCORE_TASKS, name] if name == "chatcore" else [name])]
    return list(dict.fromkeys(expanded))


def headline_score(task: str, result: dict[str, Any]) -> float | None:
    """A result's headline number: bpb, the CORE / ChatCORE figure, or the accuracy."""
    value = result.get(SCORE_KEYS.get(task, "accuracy"))
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------------------------
# reading eval files: every problem is a BadInput naming the file and the line


def _open_eval_file(path: Path, newline: str | None = None) -> io.TextIOWrapper:
    """An eval file as UTF-8 text (a byte order mark allowed); BadInput when it is missing, not
    a regular file (a FIFO would hang the reader) or unreadable."""
    if not os.path.lexists(path):
        raise BadInput(f"{path}: eval file not found (is --data-dir right?)")
    return io.TextIOWrapper(open_regular(path, "eval file"), encoding="utf-8-sig", newline=newline)


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object is BadInput."""
    path = Path(path)
    with _open_eval_file(path) as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = parse_json(line)
                except NestedTooDeeply as error:
                    raise BadInput(f"{path}:{number}: {error.msg}") from None
                except json.JSONDecodeError as error:
                    raise BadInput(f"{path}:{number}: not valid JSON ({error.msg})") from None
                if not isinstance(record, dict):
                    raise BadInput(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
                yield number, record
        except UnicodeDecodeError:
            raise BadInput(f"{path}: not UTF-8 text") from None
        except OSError as error:
            raise BadInput(f"{path}: cannot read eval file ({error.strerror or error})") from None


def iter_csv(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) for each CSV record (line number of the record's first line)."""
    path = Path(path)
    with _open_eval_file(path, newline="") as handle:
        reader = csv.reader(handle)
        line = 1
        try:
            for row in reader:
                yield line, row
                line = reader.line_num + 1
        except csv.Error as error:
            raise BadInput(f"{path}:{reader.line_num}: malformed CSV ({error})") from None
        except UnicodeDecodeError:
            raise BadInput(f"{path}: not UTF-8 text") from None
        except OSError as error:
            raise BadInput(f"{path}: cannot read eval file ({error.strerror or error})") from None


def require(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """record[key], which must exist and be of `kind`; else BadInput at `where` (FILE:LINE)."""
    if key not in record:
        raise BadInput(f"{where}: missing field '{key}'")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadInput(f"{where}: field '{key}' must be {names}, got {type(value).__name__}")
    return value


def take(items: list, limit: int | None) -> list:
    """The first `limit` items (all when limit is 0 or None): deterministic, so reruns compare."""
    return items[:limit] if limit else items


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class TaskResult:
    """One task's scores: `accuracy` is the headline (bpb for the bpb task), `details` the rest."""

    task: str
    accuracy: float | None
    n: int
    chance: float | None
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"accuracy": self.accuracy, "n": self.n, "chance": self.chance}
        out.update(self.details)
        return out


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def describe_greedy_gain(name: str, results: dict[str, Any]) -> str | None:
    """"arith held-out greedy accuracy 0.420 -> 0.520 (+0.100, 95% CI +0.043..+0.157, n=200)" from a
    GRPO eval record (the end's accuracy, the paired change against the frozen start and its
    interval); None when the record has no complete change for the task (GRPO's finish message and
    the report both say it this way)."""
    keys = [f"{name}_greedy_accuracy", f"{name}_greedy_gain", f"{name}_greedy_gain_low",
            f"{name}_greedy_gain_high", f"{name}_held_out"]
    values = [results.get(key) for key in keys]
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
        return None
    after, change, low, high, count = values
    return (f"{name} held-out greedy accuracy {after - change:.3f} -> {after:.3f} ({change:+.3f}, "
            f"95% CI {low:+.3f}..{high:+.3f}, n={count:.0f})")


def chat_model(meta: dict[str, Any]) -> bool:
    """Checkpoints of the chat stages know the chat format; base models get plain-text prompts."""
    return str(meta.get("stage", "")) in ("sft", "grpo")
