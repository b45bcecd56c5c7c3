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

# metric name -> (record kind, field). "time" on the x axis is elapsed training time (pauses and the
# gaps between a stop and a resume left out), the same clock as the dashboard's "elapsed".
METRICS: dict[str, tuple[str, str]] = {
    "loss": ("train", "loss"),
    "val_bpb": ("eval", "val_bpb"),
    "lr_multiplier": ("train", "lr_multiplier"),
    "tokens_per_second": ("train", "tokens_per_second"),
    "mfu": ("train", "mfu"),
    "grad_norm": ("train", "grad_norm"),
    # SFT: its held-out replies ("eval" records)
    "end_rate": ("eval", "end_rate"),
    "sft_accuracy": ("eval", "accuracy"),
    # GRPO: per step ("grpo" records)
    "reward_mean": ("grpo", "reward_mean"),
    "reward_std": ("grpo", "reward_std"),
    "grpo_accuracy": ("grpo", "accuracy"),
    "zero_variance_fraction": ("grpo", "zero_variance_fraction"),
    "completion_length": ("grpo", "completion_length"),
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
    """Everything the dashboard shows about one run, built from its metrics records as they
    arrive (the watcher reads them; `poll` reads the folder itself, for scripts and tests)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.name = self.run_dir.name
        self.tail: runs.MetricsTail | None = None
        self.series: dict[str, Series] = {name: Series() for name in METRICS}
        self.tokens = 0.0
        self.best_val_bpb: float | None = None
        self.last_sample: dict[str, Any] | None = None
        self.last_train: dict[str, Any] | None = None
        self.last_progress: dict[str, Any] | None = None
        self.last_tokenizer: dict[str, Any] | None = None
        self.sys: dict[str, Any] | None = None
        self.stage: str | None = None  # of the newest record that names one
        self.eval_checkpoint: str | None = None  # an eval folder: the checkpoint its newest eval is of
        self.records = 0
        # The training clock: seconds spent training, up to the newest train record at clock_t.
        self.clock = 0.0
        self.clock_t: float | None = None
        self.paused_since: float | None = None

    @property
    def bad_lines(self) -> int:
        return self.tail.bad_lines if self.tail else 0

    def poll(self) -> int:
        """Read new records from the run folder; returns how many arrived."""
        if self.tail is None:
            self.tail = runs.MetricsTail(self.run_dir / "metrics.jsonl")
        try:
            truncated = self.tail.path.stat().st_size < self.tail.offset
        except OSError:
            truncated = False
        if truncated:  # MetricsTail starts over when the file was truncated or replaced: so do we
            tail = self.tail
            self.__init__(self.run_dir)
            self.tail = tail
        records = self.tail.read()
        self.extend(records)
        return len(records)

    def extend(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.add(record)
        self.records += len(records)

    def elapsed(self, t: float | None) -> float:
        """Training seconds at wall time t: the clock, plus the time since its last train record
        unless the run is paused (t None: the clock itself)."""
        if t is None or self.clock_t is None or self.paused_since is not None:
            return self.clock
        return self.clock + max(0.0, t - self.clock_t)

    def _tick(self, record: dict[str, Any], t: float) -> None:
        """Advance the clock to a train record: by the time since the previous one, or, after a
        new worker started (a resume) or a pause, by the step's own duration only."""
        if self.clock_t is None:
            step_seconds = _number(record.get("step_seconds"))
            self.clock += step_seconds if step_seconds is not None else 0.0
        else:
            self.clock += max(0.0, t - self.clock_t)
        self.clock_t = t

    def add(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        t = _number(record.get("t"))
        step = _number(record.get("step"))
        if isinstance(record.get("stage"), str) and kind != "event":
            self.stage = record["stage"]
        if kind == "train":
            self.last_train = record
            if self.paused_since is not None:  # training again (a worker killed while paused, resumed)
                self.paused_since, self.clock_t = None, None
            if t is not None:
                self._tick(record, t)
            tokens = _number(record.get("tokens"))
            if tokens is not None:
                self.tokens = tokens
        elif kind == "sample":
            self.last_sample = record
        elif kind == "progress":
            self.last_progress = record
        elif kind == "tokenizer":
            self.last_tokenizer = record
        elif kind == "sys":
            self.sys = record
            self.clock_t = None  # a new worker (a resume): the gap before it is no training time
        elif kind == "event" and t is not None:
            self.track_pause(str(record.get("message", "")), t)
        if kind == "event" and isinstance(record.get("checkpoint"), str):
            self.eval_checkpoint = record["checkpoint"]
        if kind == "eval":
            bpb = _number(record.get("val_bpb"))
            if bpb is not None and (self.best_val_bpb is None or bpb < self.best_val_bpb):
                self.best_val_bpb = bpb
        x_time = self.elapsed(t)
        for name, (metric_kind, field_name) in METRICS.items():
            if kind != metric_kind:
                continue
            value = _number(record.get(field_name))
            if value is None or step is None:
                continue
            self.series[name].append(step, self.tokens, x_time, value)

    def track_pause(self, message: str, t: float) -> None:
        """The training loop logs "paused at step N" and "resumed at step N" / "stop requested ..."
        events: the clock stands still in between."""
        if message.startswith("paused at") and self.paused_since is None:
            self.clock, self.paused_since = self.elapsed(t), t
        elif self.paused_since is not None and message.startswith(("resumed at", "stop requested", "stopped at")):
            self.paused_since, self.clock_t = None, t
