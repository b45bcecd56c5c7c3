"""Concurrent generation over one engine: a single thread that steps one continuous batch.

Requests arrive as tickets: a prompt already rendered and tokenized (by the request handler, off
this thread), sampling settings and n. The generation thread admits waiting tickets into the
engine's `Batch` (engine/batch.py) while its rows fit `max_active`, then calls `batch.step()`
again and again: every active request gets one token per step from one batched decode step, a new
request's prompt is prefilled a chunk per step beside them, and a finished one leaves at once.
Events travel to the request's asyncio queue with `loop.call_soon_threadsafe`; the HTTP side only
ever awaits its queue.

Only this thread touches the model, so the engine needs no locking. A request the client gave up on
is cancelled: the thread drops it from the batch before the next step. Requests beyond
`max_active` rows wait in order; beyond `max_waiting` rows they are refused (`Busy`). Events are
handed to the event loop in batches (see `_Outbox`), never more than ~20 ms late.

A failure inside generation ends the requests it touched (one member, or every member for a failed
decode step), never the server: the traceback goes to the log, the client a generic message.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("picochat.serve")

# What a ticket's queue receives besides (row index, engine event): the end of the stream, or a failure.
END = object()


@dataclass
class Failure:
    """Generation failed for this request; `message` is what the client may see (no internals)."""

    message: str = "the model failed while generating this answer; the error is in the server's log"


class Busy(Exception):
    """Too many requests are waiting already (the server answers 429, which clients retry)."""


@dataclass
class Job:
    """What to generate: the prompt's ids and the settings of its n rows."""

    prompt_ids: list[int]
    params: Any  # SamplingParams
    n: int = 1
    use_tools: bool = True
    tool_text: Any = None  # how tool blocks read as answer text (stop strings apply to them)


@dataclass
class Ticket:
    """One request: the HTTP handler reads `queue`; either side may `cancel()`."""

    job: Job
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue  # receives (row index, event), then (None, END) or (None, Failure)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class _Outbox:
    """Items for the event loops, handed over in one call per loop every few milliseconds rather
    than one per token: each hand-over wakes the loop, and a loop woken per token competes with
    the generation thread for the GIL."""

    FLUSH_SECONDS = 0.02

    def __init__(self):
        self.items: dict[asyncio.AbstractEventLoop, list] = {}
        self.last_flush = time.monotonic()

    def put(self, ticket: Ticket, item: tuple[Any, Any]) -> None:
        self.items.setdefault(ticket.loop, []).append((ticket, item))

    def flush(self, unless_recent: bool = False) -> None:
        if unless_recent and time.monotonic() - self.last_flush < self.FLUSH_SECONDS:
            return
        for loop, items in self.items.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
                for ticket, _ in items:
                    ticket.cancel()
        self.items = {}
        self.last_flush = time.monotonic()


def _deliver(items: list) -> None:
    for ticket, item in items:
        ticket.queue.put_nowait(item)


class Scheduler:
    def __init__(self, batch, max_active: int = 16, max_waiting: int = 256):
        """batch: an engine Batch (or anything with add/cancel/step/members/rows).
        max_active: most rows (choices) generating at once; max_waiting: most rows queued."""
        self.batch = batch
        self.max_active = max_active
        self.max_waiting = max_waiting
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._waiting_rows = 0
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.active_count = 0  # rows in the batch, read by /health; written only by the generation thread
        self.completed = 0
        self.cancelled = 0
        self.failed = 0

    # ---- HTTP side (event loop thread) ----

    def submit(self, job: Job, queue: asyncio.Queue | None = None) -> Ticket:
        """Queue a generation. Its events arrive on `queue` as (row index, event), then (None, END)
        or (None, Failure). Raises Busy when max_waiting rows wait already."""
        queue = asyncio.Queue() if queue is None else queue
        ticket = Ticket(job=job, loop=asyncio.get_running_loop(), queue=queue)
        with self._wakeup:
            if self._waiting_rows + job.n > self.max_waiting:
                raise Busy(f"{self._waiting_rows} answers are already waiting; try again shortly")
            self._waiting.append(ticket)
            self._waiting_rows += job.n
            self._wakeup.notify()
        return ticket

    @property
    def waiting_count(self) -> int:
        return self._waiting_rows

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="picochat-generation", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # ---- generation thread ----

    def _run(self) -> None:
        batch = self.batch
        tickets: dict[int, Ticket] = {}  # id(member) -> its ticket
        outbox = _Outbox()
        while True:
            with self._wakeup:
                while not self._stopping and not batch.members and not self._waiting:
                    self._wakeup.wait()
                if self._stopping:
                    break
                admitted = []
                while self._waiting and batch.rows + self._waiting[0].job.n <= self.max_active:
                    ticket = self._waiting.popleft()
                    self._waiting_rows -= ticket.job.n
                    admitted.append(ticket)
            for ticket in admitted:
                job = ticket.job
                try:
                    member = batch.add(job.prompt_ids, job.params, job.n, job.use_tools, job.tool_text)
                except Exception:
                    log.exception("could not start a generation")
                    self.failed += 1
                    outbox.put(ticket, (None, Failure()))
                    continue
                tickets[id(member)] = ticket

            for member in list(batch.members):  # clients that left
                ticket = tickets[id(member)]
                if ticket.cancelled.is_set():
                    batch.cancel(member)
                    del tickets[id(member)]
                    outbox.put(ticket, (None, END))
                    self.cancelled += 1

            if batch.members:
                updates, ended = batch.step()
                for member, row, events in updates:
                    ticket = tickets[id(member)]
                    for event in events:
                        outbox.put(ticket, (row, event))
                for member in ended:
                    ticket = tickets.pop(id(member))
                    if member.error is not None:
                        log.error("generation failed (%d prompt tokens, %d rows)", len(member.prompt_ids),
                                  member.rows, exc_info=member.error)
                        self.failed += 1
                        outbox.put(ticket, (None, Failure()))
                    else:
                        self.completed += 1
                        outbox.put(ticket, (None, END))
            self.active_count = batch.rows
            outbox.flush(unless_recent=bool(batch.members))

        for member in list(batch.members):  # shutting down: end every stream cleanly
            batch.cancel(member)
            outbox.put(tickets[id(member)], (None, END))
        with self._wakeup:
            while self._waiting:
                outbox.put(self._waiting.popleft(), (None, END))
            self._waiting_rows = 0
        outbox.flush()
        self.active_count = 0
