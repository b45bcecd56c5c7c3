"""One reading of a completion and of its final answer, for the evals and the rewards alike.

A completion is what the model produced after <|assistant_start|>: free text, thoughts
<|think_start|>...<|think_end|>, calculator calls <|python_start|>expr<|python_end|> with the
engine's forced <|output_start|>result<|output_end|>, and usually a closing <|assistant_end|>.
It is read into segments the way the engine's rows read their tokens (engine/rows.py): from the
token ids when they are at hand (`parse_tokens`: a marker is a special token, never text that
spells one, so a model cannot fake a calculator call by writing its markers as text), or from
decoded text (`parse_text`: answer sheets, tests, anything already decoded).

The ANSWER is the text outside thoughts with tool outputs kept and tool-call expressions dropped:
"<|python_start|>6*7<|python_end|><|output_start|>42<|output_end|>" answers 42, since the model
chose the expression whose value it reports. Its final number is the one after the last "####",
else the last number (commas and "$" ignored); a multiple-choice letter is the first standalone
A-E or the one after "answer is".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from workbench.tokenizer import (
    ASSISTANT_END,
    ASSISTANT_START,
    BOS,
    OUTPUT_START,
    PYTHON_START,
    SPECIAL_TOKENS,
    THINK_END,
    THINK_START,
    USER_START,
)

# where a completion ends: the turn's end, or a token that can only mean the model left its turn
END_MARKERS = frozenset({ASSISTANT_END, BOS, USER_START, ASSISTANT_START})
_MARKER = re.compile("(" + "|".join(re.escape(token) for token in SPECIAL_TOKENS) + ")")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_LETTER = re.compile(r"(?:answer(?: is|:)?\s*\(?([A-E])\b)|(?:^|[\s(])([A-E])(?:[).:]|\s|$)")


@dataclass
class ParsedCompletion:
    thought: str | None  # text of the first thought; None when the model did not think
    well_formed: bool  # a thought first, closed, then a non-blank answer
    answer: str  # text outside thoughts: tool outputs kept, tool-call expressions and markers gone
    answer_text: str  # the model's own words only: answer without the tool outputs, stripped
    tool_calls: list[tuple[str, str | None]] = field(default_factory=list)  # (expression, output or None)
    ended: bool = False  # the model closed its turn with <|assistant_end|>


def _read(pieces: list[tuple[bool, str]]) -> ParsedCompletion:
    """pieces: (is_marker, text) in order. A state machine like engine/rows.py's _Row."""
    mode = "text"  # text | thought | tool_call | tool_output
    segments: list[tuple[str, str]] = []  # (kind, text), kind: text | thought | tool_call | tool_output
    closed_thoughts, ended = 0, False
    for is_marker, text in pieces:
        if not is_marker:
            if segments and segments[-1][0] == mode:
                segments[-1] = (mode, segments[-1][1] + text)
            else:
                segments.append((mode, text))
            continue
        if text in END_MARKERS:
            ended = text == ASSISTANT_END
            break
        if text == THINK_END and mode == "thought":
            closed_thoughts += 1
        mode = {THINK_START: "thought", PYTHON_START: "tool_call", OUTPUT_START: "tool_output"}.get(text, "text")
        if mode != "text":
            segments.append((mode, ""))  # an empty call or output is still a call or output

    calls: list[tuple[str, str | None]] = []
    for kind, text in segments:
        if kind == "tool_call":
            calls.append((text.strip(), None))
        elif kind == "tool_output" and calls and calls[-1][1] is None:
            calls[-1] = (calls[-1][0], text)
    answer = "".join(text for kind, text in segments if kind in ("text", "tool_output"))
    own = "".join(text for kind, text in segments if kind == "text").strip()
    thoughts = [text for kind, text in segments if kind == "thought"]
    first_thought = next((i for i, (kind, _) in enumerate(segments) if kind == "thought"), None)
    well_formed = (first_thought is not None and len(thoughts) == 1 and closed_thoughts == 1
                   and not "".join(text for _, text in segments[:first_thought]).strip()
                   and bool("".join(text for kind, text in segments[first_thought + 1:]
                                    if kind in ("text", "tool_output")).strip()))
    return ParsedCompletion(thought=thoughts[0] if thoughts else None, well_formed=well_formed, answer=answer,
                            answer_text=own, tool_calls=calls, ended=ended)


def parse_text(text: str) -> ParsedCompletion:
    """A decoded completion (special tokens written as their strings)."""
    return _read([(index % 2 == 1, piece) for index, piece in enumerate(_MARKER.split(text)) if piece or index % 2])


def parse_tokens(tokenizer, ids: list[int]) -> ParsedCompletion:
    """A completion's token ids: special tokens are the markers, runs of other tokens the text."""
    pieces: list[tuple[bool, str]] = []
    run: list[int] = []
    for token in ids:
        if tokenizer.is_special(token):
            if run:
                pieces.append((False, tokenizer.decode(run)))
                run = []
            pieces.append((True, tokenizer.decode([token])))
        else:
            run.append(token)
    if run:
        pieces.append((False, tokenizer.decode(run)))
    return _read(pieces)


def parse(completion: str | ParsedCompletion) -> ParsedCompletion:
    return completion if isinstance(completion, ParsedCompletion) else parse_text(completion)


# ---------------------------------------------------------------------------------------------
# final answers


def normalize_number(text: str) -> str | None:
    """The first number in text, normalised: '1,234.50' -> '1234.5'; '$18' -> '18'; None when
    there is none."""
    found = _NUMBER.search(text.replace("$", ""))
    if not found:
        return None
    try:
        value = float(found.group(0).replace(",", ""))
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


def final_number(answer: str) -> str | None:
    """The final number of an answer, normalised: after the last '####' if there is one, else the
    last number."""
    if "####" in answer:
        return normalize_number(answer.rsplit("####", 1)[1])
    numbers = _NUMBER.findall(answer.replace("$", ""))
    return normalize_number(numbers[-1]) if numbers else None


def same_number(predicted: str | float | None, reference: str | float | int | None) -> bool:
    if predicted is None or reference is None:
        return False
    try:
        a, b = float(predicted), float(reference)
    except ValueError:
        return str(predicted) == str(reference)
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def number_correct(completion: str | ParsedCompletion, reference: str | float | int) -> bool:
    """GSM8K and arithmetic: the completion's final number equals the reference."""
    return same_number(final_number(parse(completion).answer), reference)


def chosen_letter(answer: str) -> str | None:
    """The chosen option of a multiple-choice answer: "answer is B", "(B)", "B." or a bare "B"."""
    match = _LETTER.search(answer.strip())
    return (match.group(1) or match.group(2)) if match else None


def letter_correct(completion: str | ParsedCompletion, reference: str) -> bool:
    return chosen_letter(parse(completion).answer) == reference.strip()


def tool_used_correctly(parsed: ParsedCompletion) -> bool:
    """At least one calculator call, and every call produced a result (not an error)."""
    return bool(parsed.tool_calls) and all(
        expression and output is not None and output.strip() and "error" not in output.lower()
        for expression, output in parsed.tool_calls)
