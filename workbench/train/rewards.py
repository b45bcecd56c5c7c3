"""Rewards for GRPO: functions of a completion's text and the task's known answer.

A completion is the decoded text the model produced after <|assistant_start|> (special tokens
included, as Tokenizer.decode writes them): free text, calculator calls
<|python_start|>expr<|python_end|> with the engine's forced <|output_start|>result<|output_end|>, and
usually a closing <|assistant_end|>. Tool output is never credited as the model's own answer: the
final answer is read from the model's text only.

- numeric_reward: GSM8K and the synthetic arithmetic task. The number after "####" if present,
  else the last number of the answer text, compared with the reference.
- letter_reward: ARC-style multiple choice; the first standalone letter A-E (or "answer is X").
- tool_reward: the tool-use task; full reward needs a calculator call that ran without error and
  the right final answer; the right answer without (working) tool use earns half.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

PYTHON_START, PYTHON_END = "<|python_start|>", "<|python_end|>"
OUTPUT_START, OUTPUT_END = "<|output_start|>", "<|output_end|>"
THINK_START, THINK_END = "<|think_start|>", "<|think_end|>"
SPECIAL_PATTERN = re.compile(r"<\|[a-z_]+\|>")
NUMBER_PATTERN = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")
LETTER_PATTERN = re.compile(r"(?:answer(?: is|:)?\s*\(?([A-E])\b)|(?:^|[\s(])([A-E])(?:[).:]|\s|$)")


@dataclass
class ParsedCompletion:
    answer_text: str  # the model's own text: tool calls, tool output and thoughts removed
    tool_calls: list[tuple[str, str | None]] = field(default_factory=list)  # (expression, output or None)
    thought: str = ""
    ended: bool = False  # the model closed its turn with <|assistant_end|>


def parse_completion(text: str) -> ParsedCompletion:
    """Split a decoded completion into answer text, tool calls (with outputs) and thoughts."""
    ended = "<|assistant_end|>" in text
    text = text.split("<|assistant_end|>", 1)[0]
    answer, thought, calls = [], [], []
    position = 0
    pattern = re.compile(
        re.escape(PYTHON_START) + r"(.*?)(?:" + re.escape(PYTHON_END) + r"|$)"
        r"(?:\s*" + re.escape(OUTPUT_START) + r"(.*?)(?:" + re.escape(OUTPUT_END) + r"|$))?"
        r"|" + re.escape(THINK_START) + r"(.*?)(?:" + re.escape(THINK_END) + r"|$)",
        re.S,
    )
    for match in pattern.finditer(text):
        answer.append(text[position:match.start()])
        position = match.end()
        if match.group(3) is not None:
            thought.append(match.group(3))
        else:
            calls.append((match.group(1).strip(), match.group(2)))
    answer.append(text[position:])
    answer_text = SPECIAL_PATTERN.sub(" ", "".join(answer)).strip()
    return ParsedCompletion(answer_text=answer_text, tool_calls=calls, thought="".join(thought), ended=ended)


def extract_number(text: str) -> float | None:
    """The final numeric answer in a piece of answer text: after the last "####" when there is one,
    else the last number; commas and dollar signs are ignored. None when there is no number."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
        found = NUMBER_PATTERN.search(text)
    else:
        numbers = NUMBER_PATTERN.findall(text)
        found = None
        if numbers:
            return _to_float(numbers[-1])
    return _to_float(found.group(0)) if found else None


def _to_float(token: str) -> float | None:
    cleaned = token.replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def numbers_equal(a: float | None, b: float | str | None) -> bool:
    if a is None or b is None:
        return False
    b = _to_float(str(b)) if not isinstance(b, (int, float)) else float(b)
    return b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def numeric_reward(completion: str, answer: float | int | str) -> float:
    """1.0 when the completion's final number equals the answer, else 0.0."""
    return 1.0 if numbers_equal(extract_number(parse_completion(completion).answer_text), answer) else 0.0


def extract_letter(text: str) -> str | None:
    """The chosen option in a multiple-choice answer: "answer is B", "(B)", "B." or a bare "B"."""
    match = LETTER_PATTERN.search(text.strip())
    if not match:
        return None
    return match.group(1) or match.group(2)


def letter_reward(completion: str, answer: str) -> float:
    """1.0 when the first chosen letter equals the answer letter (case-sensitive capital A-E)."""
    return 1.0 if extract_letter(parse_completion(completion).answer_text) == answer.strip() else 0.0


def tool_used_correctly(parsed: ParsedCompletion) -> bool:
    """At least one calculator call, and every call produced a result (not an error)."""
    if not parsed.tool_calls:
        return False
    for expression, output in parsed.tool_calls:
        if not expression or output is None or output.strip() == "" or "error" in output.lower():
            return False
    return True


def tool_reward(completion: str, answer: float | int | str) -> float:
    """1.0: a working calculator call and the right answer; 0.5: right answer without working tool use."""
    parsed = parse_completion(completion)
    if not numbers_equal(extract_number(parsed.answer_text), answer):
        return 0.0
    return 1.0 if tool_used_correctly(parsed) else 0.5
