"""MetricPlot: the one plotting widget of the app (the backend, textual-plotext, stays behind it).

textual-plotext rebuilds the whole figure on every render, and its cost grows with the number of
points (about 0.8 s at 100k). So every series is downsampled to a few points per column here, and
the widget only renders when Textual asks (it is visible and something changed).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

from workbench.tui.series import bucket_means, downsample

POINTS_PER_COLUMN = 2  # a min and a max per bucket: spikes stay visible
COLORS = ("cyan", "orange", "green", "magenta", "red", "blue", "yellow")


@dataclass
class Line:
    label: str
    xs: list[float]
    ys: list[float]
    color: str | None = None


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

    def set_lines(self, lines: list[Line], *, log_y: bool = False, x_label: str = "step") -> None:
        self.lines, self.log_y, self.x_label = lines, log_y, x_label
        self.refresh()

    def point_count(self) -> int:
        """Points actually handed to plotext on the last render (for tests and the benchmark)."""
        return self._last_point_count

    _last_point_count = 0

    def _draw(self, draw, xs: list[float], ys: list[float], color: str, label: str | None) -> int:
        if self.log_y:  # a log axis cannot show zero or negative values
            kept = [(x, y) for x, y in zip(xs, ys, strict=False) if y > 0]
            xs, ys = [x for x, _ in kept], [y for _, y in kept]
        if ys:
            draw(xs, ys, label=label, color=color, marker="braille")
        return len(ys)

    def render(self) -> RenderResult:
        plt = self.plt
        plt.clear_figure()
        plt.title(self.title)
        plt.xlabel(self.x_label)
        columns = max(8, self.size.width)
        drawn = 0
        for index, line in enumerate(self.lines):
            color = line.color or COLORS[index % len(COLORS)]
            if len(line.ys) <= columns * POINTS_PER_COLUMN:
                drawn += self._draw(plt.plot, line.xs, line.ys, color, line.label)
                continue
            # More points than the plot can show: a line through each column's mean, and each
            # column's min and max as dots (spikes stay visible, and no zig-zag lines to draw).
            drawn += self._draw(plt.plot, *bucket_means(line.xs, line.ys, columns), color, line.label)
            drawn += self._draw(plt.scatter, *downsample(line.xs, line.ys, columns), color, None)
        self._last_point_count = drawn
        if drawn == 0:
            return Text(f"{self.title}\n\n  no data yet", style="dim")
        if self.log_y:
            plt.yscale("log")
        return super().render()
