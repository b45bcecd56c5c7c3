"""Metric series for the dashboard: records from metrics.jsonl in, plottable (x, y) lists out.

Pure Python (no Textual, no numpy, no torch) so it is cheap to import and easy to test. Runs can
have 100k+ points; a terminal plot has ~100 columns, so every series is cut down to a few points
per column before it reaches the plotting library (min and max of each bucket, so spikes survive).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import runs

X_AXES = ("step", "tokens", "time")

# metric name -> (record kind, field)
METRICS: dict[str, tuple[str, str]] = {
    "loss": ("train", "loss"),
    "val_bpb": ("eval", "val_bpb"),
    "lr": ("train", "lr"),
    "tokens_per_second": ("train", "tokens_per_second"),
    "mfu": ("train", "mfu"),
    "grad_norm": ("train", "grad_norm"),
}


def downsample(xs: list[float], ys: list[float], buckets: int) -> tuple[list[float], list[float]]:
    """At most 2 * buckets points: the min and the max of each bucket of consecutive points, in x
    order. Uses C-speed min/max over slices, so 100k points take a couple of milliseconds."""
    n = len(ys)
    if n <= 2 * buckets or buckets < 1:
        return list(xs), list(ys)
    out_x: list[float] = []
    out_y: list[float] = []
    for bucket in range(buckets):
        start = bucket * n // buckets
        end = (bucket + 1) * n // buckets
        if end <= start:
            continue
        chunk = ys[start:end]
        low, high = min(chunk), max(chunk)
        i_low = start + chunk.index(low)
        i_high = start + chunk.index(high)
        for i in sorted({i_low, i_high}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y


# One block of consecutive points: (count, sum of x, sum of y, min y, its x, max y, its x).
Block = tuple[int, float, float, float, float, float, float]


def _merge(first: Block, second: Block) -> Block:
    low = first[3:5] if first[3] <= second[3] else second[3:5]
    high = first[5:7] if first[5] >= second[5] else second[5:7]
    return (first[0] + second[0], first[1] + second[1], first[2] + second[2], *low, *high)


class Summary:
    """Per-block aggregates of an append-only (xs, ys) pair, kept up to date incrementally, so a
    100k-point series is cut down to a plot's columns without rereading every point per redraw.

    Complete blocks never change; when there are max_blocks of them, neighbours merge and the block
    size doubles (so the work per new point stays constant). Only the last, partial block is
    recomputed on each read.
    """

    def __init__(self, xs: list[float], ys: list[float], max_blocks: int = 1024):
        self.xs, self.ys = xs, ys
        # Between max_blocks/2 and max_blocks blocks: a plot asking for max_blocks/2 points merges
        # at most two per point. An even number, so blocks always merge in pairs.
        self.max_blocks = max(2, max_blocks + max_blocks % 2)
        self.block = 1  # points per complete block, a power of two
        self.blocks: list[Block] = []
        self.done = 0  # points folded into complete blocks

    def _aggregate(self, start: int, end: int) -> Block:
        xs, ys = self.xs[start:end], self.ys[start:end]
        low, high = min(ys), max(ys)
        return (end - start, sum(xs), sum(ys), low, xs[ys.index(low)], high, xs[ys.index(high)])

    def units(self) -> list[Block]:
        """Complete blocks plus the partial one at the end: every point counted once, in order."""
        n = len(self.ys)
        if n < self.done:  # the lists were cut: start over (RunMetrics replaces them instead)
            self.__init__(self.xs, self.ys, self.max_blocks)
        while n - self.done >= self.block:
            self.blocks.append(self._aggregate(self.done, self.done + self.block))
            self.done += self.block
            if len(self.blocks) >= self.max_blocks:
                self.blocks = [_merge(a, b) for a, b in zip(self.blocks[::2], self.blocks[1::2], strict=True)]
                self.block *= 2
        return self.blocks + ([self._aggregate(self.done, n)] if n > self.done else [])

    @staticmethod
    def _groups(units: list[Block], groups: int) -> list[Block]:
        if len(units) <= groups:
            return units
        merged = []
        for group in range(groups):
            start, end = group * len(units) // groups, (group + 1) * len(units) // groups
            block = units[start]
            for other in units[start + 1:end]:
                block = _merge(block, other)
            merged.append(block)
        return merged

    def means(self, points: int) -> tuple[list[float], list[float]]:
        """At most `points` points: the mean x and mean y of consecutive groups."""
        groups = self._groups(self.units(), points)
        return [g[1] / g[0] for g in groups], [g[2] / g[0] for g in groups]

    def extremes(self, points: int) -> tuple[list[float], list[float]]:
        """The min and the max of each of `points` consecutive groups (spikes stay visible)."""
        out_x: list[float] = []
        out_y: list[float] = []
        for group in self._groups(self.units(), points):
            for x, y in sorted({(group[4], group[3]), (group[6], group[5])}):
                out_x.append(x)
                out_y.append(y)
        return out_x, out_y


def ema(values: list[float], smoothing: float) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard does): smoothing 0 = raw,
    0.99 = very smooth; the first points are not dragged towards zero."""
    if smoothing <= 0:
        return list(values)
    out = []
    average = 0.0
    for count, value in enumerate(values, start=1):
        average = smoothing * average + (1 - smoothing) * value
        out.append(average / (1 - smoothing**count))
    return out


def _number(value: Any) -> float | None:
    return float(value) if runs.is_number(value) else None


@dataclass
class Series:
    """One metric of one run: parallel lists, one entry per record that had the field."""

    step: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)

    _smoothed: list[float] = field(default_factory=list, repr=False)
    _smoothing: float = field(default=-1.0, repr=False)

    def xs(self, axis: str) -> list[float]:
        return getattr(self, axis)

    def smoothed(self, smoothing: float) -> list[float]:
        """The EMA of value, extended incrementally as points arrive (a 100k-point run is not
        re-smoothed on every redraw, only when the smoothing factor changes)."""
        if smoothing <= 0:
            return self.value
        if smoothing != self._smoothing or len(self._smoothed) > len(self.value):
            self._smoothing, self._smoothed = smoothing, []
        done = len(self._smoothed)
        if done < len(self.value):
            # Continue the bias-corrected EMA from where the cached part stopped.
            average = self._smoothed[-1] * (1 - smoothing**done) if done else 0.0
            for count in range(done + 1, len(self.value) + 1):
                average = smoothing * average + (1 - smoothing) * self.value[count - 1]
                self._smoothed.append(average / (1 - smoothing**count))
        return self._smoothed

    def append(self, step: float, tokens: float, time: float, value: float) -> None:
        if self.step and step <= self.step[-1]:
            # A run resumed from an earlier checkpoint logs those steps again: the new points
            # replace the old ones from there on (new lists, so cached summaries start over).
            keep = bisect.bisect_left(self.step, step)
            self.step, self.tokens = self.step[:keep], self.tokens[:keep]
            self.time, self.value = self.time[:keep], self.value[:keep]
            self._smoothed, self._smoothing = [], -1.0
        self.step.append(step)
        self.tokens.append(tokens)
        self.time.append(time)
        self.value.append(value)

    def __len__(self) -> int:
        return len(self.value)


class RunMetrics:
    """Everything the dashboard shows about one run, kept up to date by reading only the new bytes
    of metrics.jsonl (runs.MetricsTail) on each poll."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.name = self.run_dir.name
        self.tail = runs.MetricsTail(self.run_dir / "metrics.jsonl")
        self.series: dict[str, Series] = {name: Series() for name in METRICS}
        self.first_time: float | None = None
        self.tokens = 0.0
        self.best_val_bpb: float | None = None
        self.last_sample: dict[str, Any] | None = None
        self.last_train: dict[str, Any] | None = None
        self.last_progress: dict[str, Any] | None = None
        self.sys: dict[str, Any] | None = None
        self.records = 0
        self.pauses: list[list[float | None]] = []  # [paused at, resumed at (None: still paused)]

    @property
    def bad_lines(self) -> int:
        return self.tail.bad_lines

    def poll(self) -> int:
        """Read new records; returns how many arrived (0: nothing to redraw)."""
        try:
            truncated = self.tail.path.stat().st_size < self.tail.offset
        except FileNotFoundError:
            truncated = False
        if truncated:  # MetricsTail starts over when the file was truncated or replaced: so do we
            self.__init__(self.run_dir)
        records = self.tail.read()
        for record in records:
            self.add(record)
        self.records += len(records)
        return len(records)

    def add(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        t = _number(record.get("t"))
        step = _number(record.get("step"))
        if t is not None and self.first_time is None:
            self.first_time = t
        if kind == "train":
            self.last_train = record
            if self.pauses and self.pauses[-1][1] is None and t is not None:
                self.pauses[-1][1] = t  # training again (a worker killed while paused, resumed)
            tokens = _number(record.get("tokens"))
            if tokens is not None:
                self.tokens = tokens
        elif kind == "sample":
            self.last_sample = record
        elif kind == "progress":
            self.last_progress = record
        elif kind == "sys":
            self.sys = record
        elif kind == "event" and t is not None:
            self.track_pause(str(record.get("message", "")), t)
        if kind == "eval":
            bpb = _number(record.get("val_bpb"))
            if bpb is not None and (self.best_val_bpb is None or bpb < self.best_val_bpb):
                self.best_val_bpb = bpb
        for name, (metric_kind, field_name) in METRICS.items():
            if kind != metric_kind:
                continue
            value = _number(record.get(field_name))
            if value is None or step is None:
                continue
            self.series[name].append(step, self.tokens, (t or 0.0) - (self.first_time or 0.0), value)

    def track_pause(self, message: str, t: float) -> None:
        """The training loop logs "paused at step N" and "resumed at step N" / "stop requested ..."
        events: the intervals between them are left out of the elapsed time."""
        open_pause = self.pauses and self.pauses[-1][1] is None
        if message.startswith("paused at") and not open_pause:
            self.pauses.append([t, None])
        elif open_pause and message.startswith(("resumed at", "stop requested", "stopped at")):
            self.pauses[-1][1] = t

    def active_seconds(self, started: float, end: float) -> float:
        """Seconds between started (when the current worker started) and end that the run was not
        paused (a pause still open at `end` counts up to `end`)."""
        paused = 0.0
        for pause_start, pause_end in self.pauses:
            if pause_start < started:  # an earlier worker's pause: it ended when that worker did
                continue
            paused += max(0.0, min(pause_end if pause_end is not None else end, end) - pause_start)
        return max(0.0, end - started - paused)
