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

import re
from dataclasses import dataclass
from functools import lru_cache

from rich.ansi import AnsiDecoder
from rich.style import Style
from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

from workbench.tui.series import Summary

COLORS = ("cyan", "orange", "green", "magenta", "red", "blue", "yellow")
DOTS_PER_COLUMN = 2  # braille cells are two dots wide


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
        self._summaries: dict[tuple[int, int, int], Summary] = {}
        self._cache_key: tuple | None = None
        self._cached: RenderResult | None = None
        self._last_point_count = 0
        self._cached_lists: list[tuple[list[float], list[float]]] = []

    def set_lines(self, lines: list[Line], *, log_y: bool = False, x_label: str = "step") -> None:
        self.lines, self.log_y, self.x_label = lines, log_y, x_label
        if self._key() != self._cache_key or not self._same_lists():
            self.refresh()

    def point_count(self) -> int:
        """Points actually handed to plotext on the last render (for tests and the benchmark)."""
        return self._last_point_count

    def _key(self) -> tuple:
        """What the picture depends on: the same key means the same picture."""
        lines = tuple((line.label, id(line.xs), id(line.ys), len(line.ys), line.color, line.envelope,
                       line.mean_line) for line in self.lines)
        return lines, self.log_y, self.x_label, self.size, self.app.theme

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
        if ys:
            draw(xs, ys, label=label, color=color, marker="braille")
        return len(ys)

    def render(self) -> RenderResult:
        key = self._key()
        if self._cached is not None and key == self._cache_key and self._same_lists():
            return self._cached
        plt = self.plt
        plt.clear_figure()
        plt.title(self.title)
        plt.xlabel(self.x_label)
        columns = max(8, self.size.width)
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
            result: RenderResult = Text(f"{self.title}\n\n  no data yet", style="dim")
        else:
            if self.log_y:
                plt.yscale("log")
            result = self._build()
        self._cache_key, self._cached = key, result
        self._cached_lists = [(line.xs, line.ys) for line in self.lines]
        return result

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
