"""Metric series for the dashboard: records from metrics.jsonl in, plottable (x, y) lists out.

Pure Python (no Textual, no numpy, no torch) so it is cheap to import and easy to test. Runs can
have 100k+ points; a terminal plot has ~100 columns, so every series is cut down to a few points
per column before it reaches the plotting library (min and max of each bucket, so spikes survive).
"""

from __future__ import annotations

import math
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


def bucket_means(xs: list[float], ys: list[float], buckets: int) -> tuple[list[float], list[float]]:
    """One point per bucket: the mean x and mean y of its points (a line through the middle of
    noisy data; drawing lines through min/max zig-zags is what makes terminal plots slow)."""
    n = len(ys)
    if n <= buckets or buckets < 1:
        return list(xs), list(ys)
    out_x, out_y = [], []
    for bucket in range(buckets):
        start, end = bucket * n // buckets, (bucket + 1) * n // buckets
        if end > start:
            out_x.append(sum(xs[start:end]) / (end - start))
            out_y.append(sum(ys[start:end]) / (end - start))
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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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

    @property
    def bad_lines(self) -> int:
        return self.tail.bad_lines

    def poll(self) -> int:
        """Read new records; returns how many arrived (0: nothing to redraw)."""
        if self.tail.offset == 0 and any(len(s) for s in self.series.values()):
            # MetricsTail starts over when the file was truncated or replaced: so do we.
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
            tokens = _number(record.get("tokens"))
            if tokens is not None:
                self.tokens = tokens
        elif kind == "sample":
            self.last_sample = record
        elif kind == "progress":
            self.last_progress = record
        elif kind == "sys":
            self.sys = record
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
            series = self.series[name]
            series.step.append(step)
            series.tokens.append(self.tokens)
            series.time.append((t or 0.0) - (self.first_time or 0.0))
            series.value.append(value)
