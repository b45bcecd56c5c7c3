"""Concurrent generation over one engine: a single thread that round-robins the active requests.

Each request is its own `Engine.stream_chat` iterator. The generation thread calls `next()` on each
active iterator in turn (one event each, about one decode step), so a long answer never blocks a
short one and every client's stream keeps moving. Events travel to the request's asyncio queue with
`loop.call_soon_threadsafe`; the HTTP side only ever awaits its queue.

Only this thread touches the model, so the engine needs no locking. A request the client gave up on
is cancelled: the thread closes its iterator at the next turn and its slot goes to the next waiting
request. Requests beyond `max_active` wait in order; beyond `max_waiting` they are refused (`Busy`).
Events are handed to the event loop in batches (see `_Outbox`), never more than ~20 ms late.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# What a ticket's queue receives besides engine events: the end of the stream, or a failure.
END = object()


@dataclass
class Failure:
    """The engine raised while generating this request; the message goes to the client."""

    message: str


class Busy(Exception):
    """Too many requests are waiting already (the server answers 429, which clients retry)."""


@dataclass
class Ticket:
    """One generation: the HTTP handler reads `queue`; either side may `cancel()`."""

    start: Callable[[], Iterator[Any]]  # creates the engine iterator (on the generation thread)
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue  # receives (tag, item): several tickets may share one queue
    tag: Any = None
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

    def put(self, ticket: Ticket, item: Any) -> None:
        self.items.setdefault(ticket.loop, []).append((ticket, (ticket.tag, item)))

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
    def __init__(self, max_active: int = 16, max_waiting: int = 256):
        self.max_active = max_active
        self.max_waiting = max_waiting
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.active_count = 0  # read by /health; written only by the generation thread
        self.completed = 0

    # ---- HTTP side (event loop thread) ----

    def submit(self, start: Callable[[], Iterator[Any]], queue: asyncio.Queue | None = None,
               tag: Any = None) -> Ticket:
        """Queue a generation; `start()` runs on the generation thread and returns the event iterator.

        Its events arrive on `queue` as (tag, event), then (tag, END) or (tag, Failure)."""
        queue = asyncio.Queue() if queue is None else queue
        ticket = Ticket(start=start, loop=asyncio.get_running_loop(), queue=queue, tag=tag)
        with self._wakeup:
            if len(self._waiting) >= self.max_waiting:
                raise Busy(f"{len(self._waiting)} requests are already waiting; try again shortly")
            self._waiting.append(ticket)
            self._wakeup.notify()
        return ticket

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

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
        active: list[tuple[Ticket, Iterator[Any] | None]] = []
        outbox = _Outbox()
        while True:
            with self._wakeup:
                while not self._stopping and not active and not self._waiting:
                    self._wakeup.wait()
                if self._stopping:
                    break
                while self._waiting and len(active) < self.max_active:
                    active.append((self._waiting.popleft(), None))  # iterator created on its first turn
            self.active_count = len(active)

            still_active = []
            for ticket, events in active:
                outbox.flush(unless_recent=True)  # a long round still streams every few ms
                if ticket.cancelled.is_set():
                    _close(events)
                    outbox.put(ticket, END)
                    continue
                try:
                    if events is None:
                        events = ticket.start()
                    event = next(events)
                except StopIteration:
                    outbox.put(ticket, END)
                    self.completed += 1
                    continue
                except Exception as error:  # an engine failure ends this request, never the server
                    _close(events)
                    outbox.put(ticket, Failure(f"generation failed: {type(error).__name__}: {error}"))
                    continue
                outbox.put(ticket, event)
                if getattr(event, "kind", None) == "done":
                    _close(events)
                    outbox.put(ticket, END)
                    self.completed += 1
                    continue
                still_active.append((ticket, events))
            outbox.flush()
            active = still_active
            self.active_count = len(active)

        for ticket, events in active:  # shutting down: end every stream cleanly
            _close(events)
            outbox.put(ticket, END)
        with self._wakeup:
            while self._waiting:
                outbox.put(self._waiting.popleft(), END)
        outbox.flush()
        self.active_count = 0


def _close(events: Iterator[Any] | None) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass
