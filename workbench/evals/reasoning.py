"""The reasoning metrics of generated answers, read by workbench.tasks.answers (the reading the
rewards use too): a completion's thought, and whether it is WELL-FORMED (the completion opens with a
thought, closes it, and a non-blank answer follows).

Metrics per task (`reasoning_metrics`): share of completions with any thought, share well-formed,
mean thought length (tokens when a token counter is given, and characters), and the accuracy of the
completions with and without a thought.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workbench.evals.common import mean
from workbench.tasks.answers import ParsedCompletion


def reasoning_metrics(parsed: list[ParsedCompletion], correct: list[bool],
                      count_tokens: Callable[[str], int] | None = None) -> dict[str, Any]:
    with_thought = [p.thought is not None for p in parsed]
    thoughts = [p.thought for p in parsed if p.thought is not None]
    metrics: dict[str, Any] = {
        "thought_share": mean([float(t) for t in with_thought]),
        "well_formed_share": mean([float(p.well_formed) for p in parsed]),
        "thought_chars": mean([float(len(t)) for t in thoughts]),
        "accuracy_with_thought": mean([float(c) for c, t in zip(correct, with_thought, strict=True) if t]),
        "accuracy_without_thought": mean([float(c) for c, t in zip(correct, with_thought, strict=True) if not t]),
        "n_with_thought": sum(with_thought),
    }
    if count_tokens is not None:
        metrics["thought_tokens"] = mean([float(count_tokens(t)) for t in thoughts])
    return metrics
