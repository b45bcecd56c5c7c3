"""Reading a generated answer: the thought, the answer after it, and the reasoning metrics.

Generative evals decode the model's tokens with their special tokens as text, so a completion reads
like "<|think_start|>...<|think_end|>The answer is <|python_start|>6*7<|python_end|><|output_start|>42
<|output_end|>. #### 42<|assistant_end|>". A thought is WELL-FORMED when the completion opens with
<|think_start|>, closes it with <|think_end|>, and an answer (non-blank text) follows.

Metrics per task (`reasoning_metrics`): share of completions with any thought, share well-formed,
mean thought length (tokens when a token counter is given, and characters), and the accuracy of the
completions with and without a thought.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench.evals.common import mean

THINK_START, THINK_END = "<|think_start|>", "<|think_end|>"
PYTHON_START, PYTHON_END = "<|python_start|>", "<|python_end|>"
OUTPUT_START, OUTPUT_END = "<|output_start|>", "<|output_end|>"
END_MARKERS = ("<|assistant_end|>", "<|bos|>", "<|user_start|>")
_ANY_SPECIAL = re.compile(r"<\|(?:bos|user_start|user_end|assistant_start|assistant_end|python_start|python_end|"
                          r"output_start|output_end|think_start|think_end)\|>")
_TOOL_CALL = re.compile(re.escape(PYTHON_START) + r".*?(?:" + re.escape(PYTHON_END) + r"|$)", re.S)


@dataclass
class ParsedCompletion:
    thought: str | None  # text of the first think block; None when the model did not think
    well_formed: bool  # <|think_start|> first, closed by <|think_end|>, then a non-blank answer
    answer: str  # the text outside the thought: tool calls removed, tool outputs kept, markers gone
    raw_answer: str  # the same with the special markers still in it


def cut_at_end(text: str) -> str:
    """The completion up to its first end marker (the engine stops there; a scripted sheet may not)."""
    for marker in END_MARKERS:
        text = text.split(marker, 1)[0]
    return text


def clean_answer(text: str) -> str:
    """Answer text for reading numbers and code: tool-call expressions dropped (their result stays,
    inside the output markers), every special marker removed."""
    text = _TOOL_CALL.sub("", text)
    return _ANY_SPECIAL.sub("", text)


def parse_completion(text: str) -> ParsedCompletion:
    text = cut_at_end(text)
    if THINK_START not in text:
        return ParsedCompletion(thought=None, well_formed=False, answer=clean_answer(text), raw_answer=text)
    before, _, rest = text.partition(THINK_START)
    if THINK_END not in rest:  # opened, never closed (cut off by the token limit, say)
        return ParsedCompletion(thought=rest, well_formed=False, answer=clean_answer(before), raw_answer=before)
    thought, _, after = rest.partition(THINK_END)
    raw_answer = before + after
    answer = clean_answer(raw_answer)
    well_formed = not before.strip() and THINK_START not in after and bool(clean_answer(after).strip())
    return ParsedCompletion(thought=thought, well_formed=well_formed, answer=answer, raw_answer=raw_answer)


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
