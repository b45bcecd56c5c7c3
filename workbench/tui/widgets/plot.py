"""MetricPlot: the one plotting widget of the app (the backend, textual-plotext, stays behind it).

textual-plotext rebuilds the whole figure on every render. Its cost grows with the number of points
and, for lines, with the cells each segment crosses (a line through 130 points costs about four
times a scatter of the same points). So:
- a series with more points than the plot has dot columns is cut down to a mean per dot column,
  drawn as dots (dense enough to read as a line), plus each column's min and max for raw series, so
  spikes survive; shorter series are drawn as lines;
- the cut-down comes from series.Summary, updated incrementally as points arrive;
- the rendered figure is cached until the lines, the settings or the size change.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from rich.ansi import AnsiDecoder
from rich.style import Style
from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

from workbench.runs import format_duration
from workbench.tui.series import Summary

COLORS = ("cyan", "orange", "green", "magenta", "red", "blue", "yellow")  # run i of a dashboard: COLORS[i]
DOTS_PER_COLUMN = 2  # braille cells are two dots wide
TICK_COLUMNS = 12  # about one x tick per this many columns
TICK_ROWS = 3  # about one y tick per this many rows
LEGEND_MIN_HEIGHT = 14  # rows from which a plot draws its legend


def run_color(index: int) -> str:
    """The colour of the index-th run shown: the same in every panel."""
    return COLORS[index % len(COLORS)]


def run_style(index: int) -> str:
    """The same colour as rich spells it (for the run's name in the headline, the overlay legend)."""
    return {"orange": "dark_orange"}.get(run_color(index), run_color(index))


def human_count(value: float) -> str:
    """12k, 1.2M, 47.1k, 0.25: three significant digits at most, the unit a letter."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"


def human_seconds(value: float) -> str:
    """45s, 5m30s, 1h05m."""
    return f"{value:.0f}s" if abs(value) < 60 else format_duration(value)


def nice_ticks(low: float, high: float, count: int) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) from low to high."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    ticks = _ticks(low, high, count)
    return ticks if len(ticks) >= 2 else _ticks(low, high, 2 * count + 2)


def _ticks(low: float, high: float, count: int) -> list[float]:
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


SGR = re.compile(r"\x1b\[([0-9;]*)m")


@lru_cache(maxsize=256)
def _style(codes: tuple[str, ...]) -> Style:
    """The style a run of SGR codes sets, as rich reads it (each distinct run decoded once)."""
    line = "".join(f"\x1b[{code}m" for code in codes) + "x"
    spans = next(iter(AnsiDecoder().decode(line))).spans
    return spans[0].style if spans else Style()


def ansi_to_text(ansi: str) -> Text:
    """plotext's output as a rich Text. Text.from_ansi does the same but parses every escape
    sequence afresh; a plot repeats a handful thousands of times, so styles are looked up instead
    (this was a third of a dashboard redraw)."""
    text = Text()
    codes: tuple[str, ...] = ()
    for index, line in enumerate(ansi.split("\n")):
        if index:
            text.append("\n")
        pieces = SGR.split(line)  # text, code, text, code, ... text
        for position, piece in enumerate(pieces):
            if position % 2:
                codes = () if piece in ("", "0") else codes + (piece,)
            elif piece:
                text.append(piece, _style(codes) if codes else None)
    return text


@dataclass
class Line:
    label: str | None
    xs: list[float]
    ys: list[float]
    color: str | None = None
    envelope: bool = False  # raw noisy data: also draw each column's min and max
    mean_line: bool = True  # False: only the envelope (a smoothed line drawn on top says the rest)


class MetricPlot(PlotextPlot):
    """A titled line plot of one metric, one or more lines (several runs, raw and smoothed)."""

    DEFAULT_CSS = """
    MetricPlot { height: 1fr; width: 1fr; min-height: 8; }
    """

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.title = title
        self.lines: list[Line] = []
        self.log_y = False
        self.x_label = "step"
        self.x_range: tuple[float, float] | None = None
        self._summaries: dict[tuple[int, int, int], Summary] = {}
        self._cache_key: tuple | None = None
        self._cached: RenderResult | None = None
        self._last_point_count = 0
        self._cached_lists: list[tuple[list[float], list[float]]] = []

    def set_lines(self, lines: list[Line], *, log_y: bool = False, x_label: str = "step",
                  x_range: tuple[float, float] | None = None) -> None:
        """x_label "time" labels the x axis in seconds (5m30s), anything else in counts (12k);
        x_range: the x axis every panel of the dashboard shares."""
        self.lines, self.log_y, self.x_label, self.x_range = lines, log_y, x_label, x_range
        if self._key() != self._cache_key or not self._same_lists():
            self.refresh()

    def point_count(self) -> int:
        """Points actually handed to plotext on the last render (for tests and the benchmark)."""
        return self._last_point_count

    def _key(self) -> tuple:
        """What the picture depends on: the same key means the same picture."""
        lines = tuple((line.label, id(line.xs), id(line.ys), len(line.ys), line.color, line.envelope,
                       line.mean_line) for line in self.lines)
        return lines, self.log_y, self.x_label, self.x_range, self.size, self.app.theme

    def _summary(self, line: Line, columns: int) -> Summary:
        key = (id(line.xs), id(line.ys), columns)
        summary = self._summaries.get(key)
        if summary is None or summary.xs is not line.xs or summary.ys is not line.ys:
            summary = self._summaries[key] = Summary(line.xs, line.ys, max_blocks=4 * columns)
        return summary

    def _draw(self, draw, xs: list[float], ys: list[float], color: str, label: str | None) -> int:
        if self.log_y:  # a log axis cannot show zero or negative values
            kept = [(x, y) for x, y in zip(xs, ys, strict=False) if y > 0]
            xs, ys = [x for x, _ in kept], [y for _, y in kept]
        if ys:  # a small plot keeps its rows for the data: the headline says which colour is which run
            draw(xs, ys, label=label if self.size.height >= LEGEND_MIN_HEIGHT else None, color=color,
                 marker="braille")
            self._y_seen.extend((min(ys), max(ys)))
        return len(ys)

    def render(self) -> RenderResult:
        key = self._key()
        if self._cached is not None and key == self._cache_key and self._same_lists():
            return self._cached
        plt = self.plt
        plt.clear_figure()
        plt.title(self.title)
        columns = max(8, self.size.width)
        self._y_seen: list[float] = []
        drawn = 0
        used = set()
        for index, line in enumerate(self.lines):
            color = line.color or COLORS[index % len(COLORS)]
            if len(line.ys) <= columns * DOTS_PER_COLUMN:  # few points: a line, or the dots would stand apart
                drawn += self._draw(plt.plot, line.xs, line.ys, color, line.label)
                continue
            summary = self._summary(line, columns)
            used.add((id(line.xs), id(line.ys), columns))
            label = line.label
            if line.envelope:
                drawn += self._draw(plt.scatter, *summary.extremes(columns), color, label)
                label = None
            if line.mean_line:
                drawn += self._draw(plt.scatter, *summary.means(columns * DOTS_PER_COLUMN), color, label)
        self._summaries = {k: v for k, v in self._summaries.items() if k in used}
        self._last_point_count = drawn
        if drawn == 0:
            result: RenderResult = Text(f"{self.title}\n\nno data yet", style="dim", justify="center")
        else:
            self._axes()
            result = self._build()
        self._cache_key, self._cached = key, result
        self._cached_lists = [(line.xs, line.ys) for line in self.lines]
        return result

    def _axes(self) -> None:
        """Human ticks (12k, 1.2M, 5m30s) on the shared x range; y ticks the same way (plotext's
        own are raw numbers like 47104 or 22.8)."""
        plt = self.plt
        if self.x_range is not None:
            low, high = self.x_range
            if high <= low:  # one point so far
                high = low + 1
            plt.xlim(low, high)
            ticks = nice_ticks(low, high, max(2, self.size.width // TICK_COLUMNS))
            if self.x_label != "time":  # steps and tokens are whole numbers
                ticks = [tick for tick in ticks if tick == int(tick)]
            label = human_seconds if self.x_label == "time" else human_count
            plt.xticks(ticks, [label(tick) for tick in ticks])
        if self.log_y:
            plt.yscale("log")
        elif self._y_seen:
            low, high = min(self._y_seen), max(self._y_seen)
            ticks = nice_ticks(low, high, max(2, (self.size.height - 4) // TICK_ROWS))
            if ticks:
                plt.yticks(ticks, [human_count(tick) for tick in ticks])

    def _build(self) -> Text:
        """PlotextPlot.render, with our faster ANSI conversion."""
        plt = self.plt
        plt.plotsize(self.size.width, self.size.height)
        plt._set_size(self.size.width, self.size.height)  # as PlotextPlot does: resizing needs both
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        return ansi_to_text(plt.build())

    def _same_lists(self) -> bool:
        """The key holds ids, and a freed list's id can be reused: check the very same lists."""
        return len(self._cached_lists) == len(self.lines) and all(
            xs is line.xs and ys is line.ys for (xs, ys), line in zip(self._cached_lists, self.lines, strict=True))
