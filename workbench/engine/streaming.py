"""Turning a token stream into text pieces: whole UTF-8 characters only, and stop strings held back.

Byte-level BPE can split a multi-byte character across tokens. `TextStream` feeds each token's raw
bytes to an incremental UTF-8 decoder, which releases a character only once all its bytes are
there, so every piece is complete text and the pieces concatenate to the full decode.

`StopFilter` holds back the tail of the text that could still grow into a stop string, so a stop
string is never shown even when it arrives split over several tokens.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence


class TextStream:
    def __init__(self, token_bytes: Callable[[int], bytes]):
        self.token_bytes = token_bytes  # e.g. Tokenizer.token_to_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text ("" while a character is incomplete)."""
        return self.decoder.decode(self.token_bytes(token_id))

    def flush(self) -> str:
        """Whatever is held back (an incomplete character becomes U+FFFD); then start afresh."""
        piece = self.decoder.decode(b"", final=True)
        self.decoder.reset()
        return piece


class StopFilter:
    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add text; return what is safe to show. Sets .stopped when a stop string appeared."""
        if not self.stops:
            return text
        self.buffer += text
        hits = [index for index in (self.buffer.find(stop) for stop in self.stops) if index >= 0]
        if hits:
            shown, self.buffer, self.stopped = self.buffer[: min(hits)], "", True
            return shown
        keep = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(self.buffer)), keep, -1):
                if self.buffer.endswith(stop[:length]):
                    keep = length
                    break
        shown = self.buffer[: len(self.buffer) - keep]
        self.buffer = self.buffer[len(self.buffer) - keep :]
        return shown

    def flush(self) -> str:
        shown, self.buffer = self.buffer, ""
        return shown
