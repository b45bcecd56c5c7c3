"""The rows of a generation: each row's state machine (tokens in, events out) and the group of
rows answering one prompt. Below engine.py (the generation loop) and batch.py (continuous
batching), which both step RowGroups; no model here, only tokens, logits and the sampler.

A row stops at <|assistant_end|> (or <|bos|>, <|user_start|>, <|assistant_start|>, which can only
mean the model has left its turn), at max_tokens (forced tokens count too) or at a stop string in
the answer text. A finished tool call (<|python_end|>) runs the calculator, and its output is
forced into the row as <|output_start|>...<|output_end|>.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from workbench.engine.sampling import SamplingParams, make_generator, sample_next
from workbench.engine.streaming import StopFilter, TextStream
from workbench.tokenizer import (
    ASSISTANT_END,
    ASSISTANT_START,
    BOS,
    OUTPUT_END,
    OUTPUT_START,
    PYTHON_END,
    PYTHON_START,
    THINK_END,
    THINK_START,
    USER_START,
)
from workbench.tools import CalculatorError, calculate


@dataclass
class Event:
    kind: str  # "text" | "thought" | "tool_call" | "tool_output" | "done"
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" on the done event
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Completion:
    text: str
    thought: str = ""
    tool_calls: list[dict[str, str]] = field(default_factory=list)  # [{"expression", "output"}]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def run_tool(expression: str) -> str:
    """The calculator's answer, or its error as text the model can read."""
    try:
        return calculate(expression)
    except CalculatorError as error:
        return f"Error: {error}"


# ---------------------------------------------------------------------------------------------
# one row's state machine: tokens in, events out


class _Row:
    def __init__(self, tokenizer, params: SamplingParams, use_tools: bool, tool_text=None):
        self.tokenizer = tokenizer
        # tool_text(kind, text): how a tool block reads in the answer's text (a server's fenced
        # blocks); stop strings then apply to those blocks too. None: tool blocks are not text.
        self.tool_text = tool_text
        self.special = {name: tokenizer.special_id(token) for name, token in (
            ("bos", BOS), ("user_start", USER_START), ("assistant_start", ASSISTANT_START),
            ("assistant_end", ASSISTANT_END), ("think_start", THINK_START), ("think_end", THINK_END),
            ("python_start", PYTHON_START), ("python_end", PYTHON_END), ("output_start", OUTPUT_START),
            ("output_end", OUTPUT_END))}
        self.stop_ids = {self.special[name] for name in ("bos", "user_start", "assistant_start", "assistant_end")}
        self.max_tokens = params.max_tokens
        self.use_tools = use_tools
        self.tokens: list[int] = []
        self.sampled_mask: list[int] = []
        self.forced: deque[int] = deque()
        self.finished = False
        self.finish_reason: str | None = None
        self.mode = "text"  # text | thought | tool_call | tool_output
        self.stream = TextStream(tokenizer.token_to_bytes)
        self.stop_filter = StopFilter(params.stop)
        # The answer's text not emitted yet, as (kind, what its event carries, how the answer's text
        # shows it): text pieces, and tool blocks when tool_text makes them text, held while a stop
        # string could still begin in them. A stop string may span the edge of a tool block ("\n\n"
        # across a text's last newline and a call's first), so the filter reads the blocks too.
        self.held: list[tuple[str, str, str]] = []
        self.held_start = 0  # where the first held piece begins in the answer's text
        self.safe = 0  # up to here no stop string can begin
        self.tool_ids: list[int] = []  # the call or output being read
        self.expression = ""  # the last tool call read, for the calculator
        # what the row has said so far, for Completion
        self.text_parts: list[str] = []
        self.thought_parts: list[str] = []
        self.tool_calls: list[dict[str, str]] = []

    def push(self, token: int, sampled: bool) -> list[Event]:
        """Take the row's next token; return the events it completes."""
        self.tokens.append(token)
        self.sampled_mask.append(1 if sampled else 0)
        events: list[Event] = []
        if token in self.stop_ids:
            self._end_segment(events, ending=True)
            self._finish("stop")
        elif token == self.special["think_start"]:
            self._end_segment(events)
            self.mode = "thought"
        elif token == self.special["think_end"]:
            self._end_segment(events)
        elif token == self.special["python_start"]:
            self._end_segment(events)
            self.mode = "tool_call"
        elif token == self.special["output_start"]:
            self._end_segment(events)
            self.mode = "tool_output"
        elif token == self.special["python_end"] or token == self.special["output_end"]:
            was_call = self.mode == "tool_call"
            self._end_segment(events)
            if was_call and token == self.special["python_end"] and self.use_tools and not self.finished:
                output = run_tool(self.expression)
                self.forced.extend([self.special["output_start"], *self.tokenizer.encode(output),
                                    self.special["output_end"]])
        elif self.tokenizer.is_special(token):
            pass  # any other special token (e.g. a stray <|user_end|>) carries no text
        elif self.mode in ("tool_call", "tool_output"):
            self.tool_ids.append(token)
        else:
            self._emit(self.stream.push(token), events)
        if not self.finished and len(self.tokens) >= self.max_tokens:
            self._end_segment(events, ending=True)
            self._finish("length")
        return events

    def finish_length(self) -> list[Event]:
        """The context is full: end the row where it stands."""
        events: list[Event] = []
        self._end_segment(events, ending=True)
        self._finish("length")
        return events

    def _finish(self, reason: str) -> None:
        if not self.finished:
            self.finished, self.finish_reason = True, reason
            self.forced.clear()

    def _emit(self, piece: str, events: list[Event]) -> None:
        if self.mode == "thought":
            if piece:
                self.thought_parts.append(piece)
                events.append(Event("thought", piece))
            return
        self._add("text", piece, piece, events)

    def _end_segment(self, events: list[Event], ending: bool = False) -> None:
        """Close the current text/thought/tool segment. Held text is released when the row ends
        here, or at every segment's end when tool blocks are not text (nothing can join them)."""
        if self.mode in ("tool_call", "tool_output"):
            text = self.tokenizer.decode_bytes(self.tool_ids).decode("utf-8", errors="replace")
            self.tool_ids = []
            if self.mode == "tool_call":
                self.expression = text
            if self.tool_text is None:
                self._event(self.mode, text, events)
            else:  # a stop string may begin before the block, inside it, or end after it
                self._add(self.mode, text, self.tool_text(self.mode, text), events)
        else:
            self._emit(self.stream.flush(), events)
        if not self.finished and (ending or self.tool_text is None):
            self.stop_filter.flush()
            self.safe = self.held_start + sum(len(shown) for _, _, shown in self.held)
            self._release(self.safe, events)
        self.mode = "text"

    def _add(self, kind: str, carried: str, shown: str, events: list[Event]) -> None:
        """The answer's text goes on by `shown`: emit what no stop string can claim any more, or
        end the answer where one begins (the tool of a call it cuts never runs)."""
        if not shown:  # part of a character: nothing to read yet
            return
        self.held.append((kind, carried, shown))
        safe = self.stop_filter.push(shown)
        if self.stop_filter.stopped:
            self._release(self.safe + len(safe), events, cut=True)
            self.held.clear()
            self._finish("stop")
            return
        self.safe += len(safe)
        self._release(self.safe, events)

    def _release(self, upto: int, events: list[Event], cut: bool = False) -> None:
        """Emit the held pieces that end by `upto` in the answer's text. A text piece is emitted in
        part; a tool block only whole, unless the answer is cut there (then its start reads as text)."""
        position = self.held_start
        while self.held and position < upto:
            kind, carried, shown = self.held[0]
            end = position + len(shown)
            if end <= upto:
                self._event(kind, carried, events)
                self.held.pop(0)
            elif kind == "text" or cut:
                self._event("text", shown[:upto - position], events)
                self.held[0] = (kind, carried[upto - position:], shown[upto - position:])
                end = upto
            else:
                break
            position = end
        self.held_start = position

    def _event(self, kind: str, text: str, events: list[Event]) -> None:
        if kind == "tool_call":
            self.tool_calls.append({"expression": text, "output": ""})
        elif kind == "tool_output":
            if self.tool_calls and not self.tool_calls[-1]["output"]:
                self.tool_calls[-1]["output"] = text
        elif not text:
            return
        else:
            self.text_parts.append(text)
        events.append(Event(kind, text))

    def done_event(self, prompt_tokens: int) -> Event:
        return Event("done", finish_reason=self.finish_reason, prompt_tokens=prompt_tokens,
                     completion_tokens=len(self.tokens))

    def completion(self, prompt_tokens: int) -> Completion:
        return Completion(text="".join(self.text_parts), thought="".join(self.thought_parts),
                          tool_calls=list(self.tool_calls), finish_reason=self.finish_reason,
                          prompt_tokens=prompt_tokens, completion_tokens=len(self.tokens))


# ---------------------------------------------------------------------------------------------
# the rows answering one prompt


class RowGroup:
    """The rows answering one prompt (n samples of a shared prefill) and their sampler state.

    `advance(logits)` takes the model's next-token logits for every row [n, V], picks each
    unfinished row's next token (its next forced token if it has any, else a sampled one), feeds
    it to the row, and returns the tokens to feed the model next (a finished row repeats its last
    token: padding whose answer is never read) and the events, as (row index, events). The one
    step of every generation loop: GenerationRun's, and a server batch's, which steps many groups
    of different prompts and settings at once (engine/batch.py) and samples the rows of groups
    with the same settings in one call (`advance(sampled=...)`, with `sampler()`'s state)."""

    def __init__(self, tokenizer, prompt_ids: list[int], params: SamplingParams, num_samples: int = 1,
                 use_tools: bool = True, tool_text=None):
        self.tokenizer, self.params = tokenizer, params
        self.prompt_ids = list(prompt_ids)
        self.rows = [_Row(tokenizer, params, use_tools, tool_text) for _ in range(num_samples)]
        self.generator: torch.Generator | None = None  # made on the logits' device
        self.seen: torch.Tensor | None = None  # [n, V] tokens each row sampled (repetition penalty)

    @property
    def finished(self) -> bool:
        return all(row.finished for row in self.rows)

    @property
    def needs_sample(self) -> bool:
        return any(not row.finished and not row.forced for row in self.rows)

    def sampler(self, logits: torch.Tensor) -> tuple[torch.Generator, torch.Tensor | None]:
        """The group's generator and seen-token mask (made on the first logits' device)."""
        if self.generator is None:
            self.generator = make_generator(self.params.seed, logits.device)
            if self.params.repetition_penalty != 1.0:
                self.seen = torch.zeros(len(self.rows), logits.size(-1), dtype=torch.bool, device=logits.device)
        return self.generator, self.seen

    def advance(self, logits: torch.Tensor | None, sampled: list[int] | None = None
                ) -> tuple[list[int], list[tuple[int, list[Event]]]]:
        """sampled: the rows' sampled tokens, drawn already (a batch's shared sampling); else
        they are drawn here from logits."""
        rows = self.rows
        if sampled is None and self.needs_sample:
            generator, seen = self.sampler(logits)
            sampled = sample_next(logits, self.params, generator, seen).tolist()
        feed, produced = [], []
        for index, row in enumerate(rows):
            if row.finished:
                feed.append(row.tokens[-1] if row.tokens else self.prompt_ids[-1])  # padding, never read
                continue
            token, was_sampled = (row.forced.popleft(), False) if row.forced else (sampled[index], True)
            events = row.push(token, was_sampled)
            if self.seen is not None and was_sampled and not self.tokenizer.is_special(token):
                self.seen[index, token] = True
            feed.append(token)
            if events:
                produced.append((index, events))
        return feed, produced

    def finish_length(self) -> list[tuple[int, list[Event]]]:
        """The context is full: every unfinished row ends with "length"."""
        return [(index, row.finish_length()) for index, row in enumerate(self.rows) if not row.finished]
