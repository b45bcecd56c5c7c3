"""The pretraining data loader: documents from the parquet shards, packed into fixed-length rows.

Each document becomes `<|bos|>` + its tokens; the documents are concatenated into one stream and
cut into rows of seq_len + 1 tokens (inputs = row[:-1], targets = row[1:]), so no token is padding
and a row may span several documents (the bos tells the model where a new one starts).

Data streams: the split's parquet row groups are dealt round-robin to `streams` streams (row group
g goes to stream g mod streams), each packed on its own. Under torchrun each rank owns
streams / world_size of them and reads, tokenizes and packs only its own row groups, so W ranks
tokenize W times as fast as one. A rank owning several streams takes its batches from them in
turn. Training has one stream per rank unless [train] data_streams says more: with
data_streams = 2, one process accumulating 2 micro-batches sees exactly the rows 2 ranks see, and
a checkpoint resumes on either.

Tokenization runs in a background thread per stream that reads ahead a bounded number of
document batches (encode_batch, which tokenizes on the tokenizer's own threads), so the training
step never waits on the tokenizer. The read-ahead is bounded in tokens too (`prefetch` batches of
`docs_per_batch` rows' worth): a corpus kept as one long document (Tiny Shakespeare in
configs/shakespeare.toml) would otherwise be tokenized `prefetch` + 1 times over at start-up, on the
core the first, timed training steps need. On CUDA each batch goes through pinned buffers kept for the
loader's life.

The order is deterministic, and `state_dict()` says exactly where each stream's next row starts:
the position (epoch, shard, row) of the document its unconsumed tokens begin in, and how many of
that document's tokens were already used. That is a few integers instead of the leftover tokens
themselves, and re-tokenizing that one document on resume gives the same tokens back, so a resumed
run sees exactly the rows the uninterrupted one would have. Under torchrun every rank's state is
gathered into the checkpoint (merge_states): the state holds every stream, so it resumes any world
size with the same number of streams.
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

STATE_VERSION = 2  # version 1: one stream, its position at the top level (still read)
POSITION_FIELDS = ("epoch", "shard", "row", "offset", "rows_done")


class PackingLoader:
    """Iterates (inputs, targets) LongTensor pairs of shape [batch_size, seq_len] on `device`,
    from this rank's streams (see the module docstring; streams None: one per rank).

    loop=True (training) starts a new epoch at the end of the split; loop=False (validation) stops
    there, yielding a last, smaller batch if rows are left over.
    """

    def __init__(self, data_dir: str | Path, split: str, tokenizer, seq_len: int, batch_size: int,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                 loop: bool = True, docs_per_batch: int = 64, prefetch: int = 8,
                 state: dict[str, Any] | None = None, streams: int | None = None):
        self.data_dir = Path(data_dir)
        self.split = split
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.streams = streams or world_size
        if self.streams % world_size:
            raise ValueError(f"{self.streams} data streams do not divide among {world_size} ranks")
        if not list_shards(self.data_dir, split):
            raise BadInput(f"{self.data_dir / split}: no {split} shards; run `picochat prepare CONFIG` first")
        per_rank = self.streams // world_size
        self._own = [_Stream(self.data_dir, split, tokenizer, seq_len, index, self.streams, loop,
                             docs_per_batch, prefetch) for index in range(rank * per_rank, (rank + 1) * per_rank)]
        self._turn = 0  # which own stream the next batch comes from
        self._finished = False
        self._pinned: list[torch.Tensor] | None = None  # CUDA: see _to_device
        self._copied: list = [None, None]
        self._slot = 1
        if state:
            self.load_state_dict(state)

    # ---- resumable position ----

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe: goes into a checkpoint's meta.json as loader_state (this rank's streams;
        merge_states joins the ranks')."""
        return {"version": STATE_VERSION, "split": self.split, "seq_len": self.seq_len, "streams": self.streams,
                "turn": self._turn, "positions": {str(s.index): s.position() for s in self._own}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seq_len", self.seq_len) != self.seq_len:
            raise BadInput(f"loader state is for seq_len {state['seq_len']}, the config says {self.seq_len}")
        if state.get("version", 1) == 1:  # one stream, the position at the top level
            state = {"streams": 1, "turn": 0, "positions": {"0": state}}
        if int(state["streams"]) != self.streams:
            raise BadInput(f"loader state has {state['streams']} data streams, this run reads {self.streams} "
                           f"(set [train] data_streams = {state['streams']} to resume it exactly)")
        for stream in self._own:
            if str(stream.index) not in state["positions"]:
                raise BadInput(f"loader state has no position for data stream {stream.index}")
            stream.load_position(state["positions"][str(stream.index)])
        self._turn = int(state.get("turn", 0)) % len(self._own)

    # ---- iteration ----

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of the stream whose turn it is (loop=False: the streams end one by one;
        iteration stops when all have)."""
        for _ in range(len(self._own)):
            stream = self._own[self._turn]
            self._turn = (self._turn + 1) % len(self._own)
            rows = []
            while len(rows) < self.batch_size:
                row = stream.next_row()
                if row is None:
                    break
                rows.append(row)
            if rows:
                return self._to_device(torch.tensor(rows, dtype=torch.long))
        raise StopIteration

    def _to_device(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cuda":
            # Two pinned buffers kept for the loader's life (pinning is a slow allocation), used in
            # turn: a buffer is refilled once its last copy to the GPU is done, which lets the CPU
            # run one batch ahead of the GPU without ever overwriting a copy in flight.
            if self._pinned is None or self._pinned[0].shape != batch.shape:
                self._pinned = [torch.empty(batch.shape, dtype=torch.long).pin_memory() for _ in range(2)]
                self._copied = [None, None]
            slot = self._slot = 1 - self._slot
            if self._copied[slot] is not None:
                self._copied[slot].synchronize()
            self._pinned[slot].copy_(batch)
            batch = self._pinned[slot].to(self.device, non_blocking=True)
            self._copied[slot] = torch.cuda.Event()
            self._copied[slot].record(torch.cuda.current_stream(self.device))
        elif self.device.type != "cpu":
            batch = batch.to(self.device)
        return batch[:, :-1], batch[:, 1:]

    def next_row(self) -> list[int] | None:
        """The next seq_len + 1 tokens of this rank's first stream, or None at its end (loop=False)."""
        return self._own[0].next_row()

    def close(self) -> None:
        for stream in self._own:
            stream.close()

    def __del__(self):
        for stream in getattr(self, "_own", []):
            stream.close(wait=False)


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One loader_state for the checkpoint from every rank's state_dict(): all streams' positions."""
    merged = dict(states[0], positions={})
    for state in states:
        merged["positions"].update(state["positions"])
    return merged


class _Stream:
    """One data stream: its row groups (index mod streams), tokenized in a background thread and
    packed into rows, with its resumable position."""

    def __init__(self, data_dir: Path, split: str, tokenizer, seq_len: int, index: int, streams: int,
                 loop: bool, docs_per_batch: int, prefetch: int):
        self.data_dir, self.split, self.tokenizer, self.seq_len = data_dir, split, tokenizer, seq_len
        self.index, self.streams = index, streams
        self.loop, self.docs_per_batch, self.prefetch = loop, docs_per_batch, prefetch
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
        # Tokens put on the queue and not yet taken: the producer encodes no more while they fill
        # the read-ahead (one batch always goes through, however long its documents).
        self._token_budget = prefetch * docs_per_batch * (seq_len + 1)
        self._queued_tokens = 0
        self._room = threading.Condition()

    def position(self) -> dict[str, int]:
        return {"epoch": self._epoch, "shard": self._shard, "row": self._row, "offset": self._offset,
                "rows_done": self._rows_done}

    def load_position(self, position: dict[str, Any]) -> None:
        if self._thread is not None:
            raise RuntimeError("load_state_dict must come before iteration starts")
        self._epoch, self._shard, self._row = int(position["epoch"]), int(position["shard"]), int(position["row"])
        self._offset, self._rows_done = int(position["offset"]), int(position.get("rows_done", 0))

    # ---- the background tokenizer ----

    def _produce(self, out: queue.Queue, epoch: int, start: tuple[int, int]) -> None:
        """Thread body: put lists of (position, token ids) on `out`, then None at the end."""
        try:
            while not self._stop.is_set():
                texts, positions, any_docs = [], [], False
                for text, (shard, row) in iter_documents(self.data_dir, self.split, start=start,
                                                         stride=(self.index, self.streams)):
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
                    if self.streams == 1:
                        raise BadInput(f"{self.data_dir / self.split}: the {self.split} split has no documents")
                    raise BadInput(f"{self.data_dir / self.split}: data stream {self.index} of {self.streams} "
                                   f"has no documents (the split has fewer row groups than streams: use "
                                   f"smaller [data] row_group_rows, or fewer streams)")
                epoch, start = epoch + 1, (0, 0)
            self._put(out, None)
        except BaseException as error:  # surfaces in the consumer, which re-raises it
            self._put(out, error)

    def _put_encoded(self, out: queue.Queue, positions: list, texts: list[str]) -> bool:
        with self._room:
            while self._queued_tokens >= self._token_budget:
                if self._stop.is_set():
                    return False
                self._room.wait(timeout=0.1)
        ids = self.tokenizer.encode_batch(texts, bos=True)
        with self._room:
            self._queued_tokens += sum(len(row) for row in ids)
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
        self._thread = threading.Thread(target=self._produce, name=f"loader-{self.split}-{self.index}", daemon=True,
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
            with self._room:
                self._queued_tokens -= sum(len(ids) for _, ids in item)
                self._room.notify()
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
        """The stream's next seq_len + 1 tokens, or None at the end (loop=False)."""
        if self._thread is None:
            self._start()
        if not self._fill(self.seq_len + 1):
            return None
        self._rows_done += 1
        return self._take(self.seq_len + 1)

    def close(self, wait: bool = True) -> None:
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(timeout=5)
