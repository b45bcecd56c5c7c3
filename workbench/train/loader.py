"""The pretraining data loader: documents from the parquet shards, packed into fixed-length rows.

Each document becomes `<|bos|>` + its tokens; the documents are concatenated into one stream and
cut into rows of seq_len + 1 tokens (inputs = row[:-1], targets = row[1:]), so no token is padding
and a row may span several documents (the bos tells the model where a new one starts).

Tokenization runs in a background thread that reads ahead a bounded number of document batches
(encode_batch), so the training step never waits on the tokenizer.

The order is deterministic, and `state_dict()` says exactly where the next row starts: the
position (epoch, shard, row) of the document the unconsumed tokens begin in, and how many of that
document's tokens were already used. That is a few integers instead of the leftover tokens
themselves, and re-tokenizing that one document on resume gives the same tokens back, so a resumed
run sees exactly the rows the uninterrupted one would have.

Under DDP every rank reads the same stream and keeps every world_size-th row (rank::world_size);
each rank consumes world_size rows per row it yields, so all ranks share one state and rank 0's
checkpoint resumes every rank.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from workbench.data.shards import iter_documents, list_shards
from workbench.errors import BadInput

STATE_VERSION = 1


class PackingLoader:
    """Iterates (inputs, targets) LongTensor pairs of shape [batch_size, seq_len] on `device`.

    loop=True (training) starts a new epoch at the end of the split; loop=False (validation) stops
    there, yielding a last, smaller batch if rows are left over.
    """

    def __init__(self, data_dir: str | Path, split: str, tokenizer, seq_len: int, batch_size: int,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                 loop: bool = True, docs_per_batch: int = 64, prefetch: int = 8,
                 state: dict[str, Any] | None = None):
        self.data_dir = Path(data_dir)
        self.split = split
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.loop = loop
        self.docs_per_batch = docs_per_batch
        self.prefetch = prefetch
        if not list_shards(self.data_dir, split):
            raise BadInput(f"{self.data_dir / split}: no {split} shards; run `picochat prepare CONFIG` first")
        # Where the unconsumed tokens start: document position (epoch, shard, row) + token offset.
        self._epoch, self._shard, self._row, self._offset = 0, 0, 0, 0
        self._rows_done = 0
        self._buffer: list[int] = []  # tokenized, not yet used from index _head on
        self._head = 0
        # Per document with tokens in the buffer: [position, tokens of it used so far, tokens of it left].
        self._docs: deque[list] = deque()
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._finished = False  # the producer reached the end of the split (loop=False only)
        if state:
            self.load_state_dict(state)

    # ---- resumable position ----

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe: goes into a checkpoint's meta.json as loader_state."""
        return {"version": STATE_VERSION, "split": self.split, "epoch": self._epoch, "shard": self._shard,
                "row": self._row, "offset": self._offset, "rows_done": self._rows_done,
                "seq_len": self.seq_len}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._thread is not None:
            raise RuntimeError("load_state_dict must come before iteration starts")
        if state.get("seq_len", self.seq_len) != self.seq_len:
            raise BadInput(f"loader state is for seq_len {state['seq_len']}, the config says {self.seq_len}")
        self._epoch, self._shard, self._row = int(state["epoch"]), int(state["shard"]), int(state["row"])
        self._offset, self._rows_done = int(state["offset"]), int(state.get("rows_done", 0))

    # ---- the background tokenizer ----

    def _produce(self, out: queue.Queue, epoch: int, start: tuple[int, int]) -> None:
        """Thread body: put lists of (position, token ids) on `out`, then None at the end."""
        try:
            while not self._stop.is_set():
                texts, positions, any_docs = [], [], False
                for text, (shard, row) in iter_documents(self.data_dir, self.split, start=start):
                    texts.append(text)
                    positions.append((epoch, shard, row))
                    if len(texts) == self.docs_per_batch:
                        any_docs = True
                        if not self._put_encoded(out, positions, texts):
                            return
                        texts, positions = [], []
                if texts:
                    any_docs = True
                    if not self._put_encoded(out, positions, texts):
                        return
                if not self.loop:
                    break
                if not any_docs and start == (0, 0):
                    raise BadInput(f"{self.data_dir / self.split}: the {self.split} split has no documents")
                epoch, start = epoch + 1, (0, 0)
            self._put(out, None)
        except BaseException as error:  # surfaces in the consumer, which re-raises it
            self._put(out, error)

    def _put_encoded(self, out: queue.Queue, positions: list, texts: list[str]) -> bool:
        ids = self.tokenizer.encode_batch(texts, bos=True)
        return self._put(out, list(zip(positions, ids, strict=True)))

    def _put(self, out: queue.Queue, item) -> bool:
        """Put an item, giving up (False) when the loader is closed while the queue is full."""
        while not self._stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._produce, name=f"loader-{self.split}", daemon=True,
                                        args=(self._queue, self._epoch, (self._shard, self._row)))
        self._thread.start()
        self._skip = self._offset  # tokens of the first document already consumed before a resume

    def _next_item(self):
        """The producer's next item; a producer that died without a word (it always puts its
        error, so this is a last resort) is an error here, never a silent hang."""
        while True:
            try:
                return self._queue.get(timeout=1.0)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(f"the {self.split} data loader thread ended unexpectedly") from None

    def _fill(self, needed: int) -> bool:
        """Pull tokenized documents until the buffer holds `needed` tokens; False at the end."""
        while len(self._buffer) - self._head < needed:
            if self._finished:
                return False
            item = self._next_item()
            if item is None:
                self._finished = True
                return False
            if isinstance(item, BaseException):
                raise item
            if self._head:  # drop the used front once per refill, not once per row
                del self._buffer[: self._head]
                self._head = 0
            for position, ids in item:
                start, self._skip = self._skip, 0
                self._buffer.extend(ids[start:])
                self._docs.append([position, start, max(0, len(ids) - start)])
        return True

    def _take(self, count: int) -> list[int]:
        """Remove `count` tokens from the front of the buffer and move the saved position past them.
        A fully used document stays as the position while it is the last one known, with offset =
        its length: a resume then re-reads it, skips all of it, and goes on with the next."""
        taken = self._buffer[self._head:self._head + count]
        self._head += count
        docs = self._docs
        while True:
            used = min(count, docs[0][2])
            docs[0][1] += used
            docs[0][2] -= used
            count -= used
            if docs[0][2] == 0 and len(docs) > 1:
                docs.popleft()
            elif count == 0:
                break
        (self._epoch, self._shard, self._row), self._offset = docs[0][0], docs[0][1]
        return taken

    def next_row(self) -> list[int] | None:
        """The next seq_len + 1 tokens this rank trains on, or None at the end (loop=False)."""
        if self._thread is None:
            self._start()
        row_tokens = self.seq_len + 1
        kept = None
        for index in range(self.world_size):
            if not self._fill(row_tokens):
                return None
            row = self._take(row_tokens)
            self._rows_done += 1
            if index == self.rank:
                kept = row
        return kept

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        while len(rows) < self.batch_size:
            row = self.next_row()
            if row is None:
                break
            rows.append(row)
        if not rows:
            raise StopIteration
        batch = torch.tensor(rows, dtype=torch.long)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            batch = batch.to(self.device)
        return batch[:, :-1], batch[:, 1:]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
