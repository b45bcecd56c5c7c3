"""Live training dashboard: the panels of the run's stage (pretraining: loss, val bpb, the learning
rate multiplier, tokens/s, MFU, grad norm; SFT: end rate and accuracy of its held-out replies; GRPO:
reward mean and spread, accuracy, zero-variance fraction, completion length), headline numbers with
the device, threads and memory, the latest sample and the tail of train.log.

Everything comes from the app's model (the watcher thread reads the folders); this screen only
redraws, and only when something arrived or a setting changed. Every run has one colour in every
panel; all panels share one x range. A small terminal shows fewer, taller plots and pages them
(left / right).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer, Static

from workbench import runs
from workbench.stages import TRAINING_STAGES
from workbench.tui.actions import control_run
from workbench.tui.model import ModelChanged
from workbench.tui.screens.runs import STATE_STYLES, format_count
from workbench.tui.series import X_AXES, RunMetrics
from workbench.tui.widgets.common import NavBar
from workbench.tui.widgets.dialogs import PickDialog
from workbench.tui.widgets.plot import Line, MetricPlot, run_color, run_style

# stage -> the panels, in order: (metric, title). Six each: a 3x2 grid on a wide terminal.
PANELS = {
    "pretrain": (("loss", "loss"), ("val_bpb", "val bpb"), ("lr_multiplier", "learning rate (x base)"),
                 ("tokens_per_second", "tokens/s"), ("mfu", "MFU %"), ("grad_norm", "grad norm")),
    "sft": (("loss", "loss"), ("val_bpb", "val bpb"), ("end_rate", "end rate (replies that end)"),
            ("sft_accuracy", "accuracy (held-out)"), ("lr_multiplier", "learning rate (x base)"),
            ("grad_norm", "grad norm")),
    "grpo": (("reward_mean", "reward mean ± std"), ("grpo_accuracy", "accuracy"),
             ("zero_variance_fraction", "zero-variance groups"), ("completion_length", "completion length"),
             ("loss", "loss"), ("lr_multiplier", "learning rate (x base)")),
}
PLOT_COUNT = 6
ALL_METRICS = {metric: title for panels in PANELS.values() for metric, title in panels}  # one plot widget each
LOG_METRICS = ("loss", "val_bpb", "grad_norm")
SMOOTHING_STEPS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
PLOT_MIN_WIDTH = 40
PLOT_MIN_HEIGHT = 9
BOTTOM_MIN_HEIGHT = 34  # below this many rows the sample and log panels give their room to plots


def grid_shape(width: int, height: int) -> tuple[int, int, bool]:
    """(columns, rows, bottom panels shown) of the plot grid for a terminal of this size."""
    bottom = height >= BOTTOM_MIN_HEIGHT
    plot_height = height - 4 - (10 if bottom else 0)  # navigation bar, headline, footer
    columns = max(1, min(3, width // PLOT_MIN_WIDTH))
    rows = max(1, min(2, plot_height // PLOT_MIN_HEIGHT))
    return columns, rows, bottom


class DashboardScreen(Screen):
    TITLE = "Dashboard"
    BINDINGS = [
        Binding("l", "toggle_log", "Log y"),
        Binding("x", "cycle_x", "X axis"),
        Binding("left_square_bracket", "smoothing(-1)", "Smooth -", key_display="["),
        Binding("right_square_bracket", "smoothing(1)", "Smooth +", key_display="]"),
        Binding("o", "overlay", "Overlay"),
        Binding("p", "control('pause')", "Pause"),
        Binding("u", "control('resume')", "Unpause"),
        Binding("s", "control('stop')", "Stop"),
        Binding("right", "page(1)", "More plots", show=False),
        Binding("left", "page(-1)", "Earlier plots", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield NavBar("dashboard")
        yield Static(id="dash-headline")
        with Grid(id="dash-plots"):
            for metric, title in ALL_METRICS.items():
                yield MetricPlot(title, id=f"plot-{metric}")
        with Horizontal(id="dash-bottom"):
            yield Static(id="dash-sample", classes="panel")
            yield Static(id="dash-log", classes="panel")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.run_dir: Path | None = None
        self.overlay: list[Path] = []
        self.log_y = False
        self.x_axis = "step"
        self.smoothing_index = SMOOTHING_STEPS.index(0.9)
        self.page = 0
        self.per_page = PLOT_COUNT
        self.shown_stage = "pretrain"
        self.query_one("#dash-sample", Static).border_title = "latest sample"
        self.query_one("#dash-log", Static).border_title = "train.log"

    @property
    def smoothing(self) -> float:
        return SMOOTHING_STEPS[self.smoothing_index]

    def on_screen_resume(self) -> None:
        self.sync_with_app()

    def sync_with_app(self) -> None:
        run_dir = self.app.current_run or self.app.default_run()
        self.app.current_run = run_dir
        if run_dir != self.run_dir:
            self.run_dir = run_dir
            self.overlay = []
        if self.app.pending_overlay is not None:  # opened on a sweep: its other runs overlaid
            self.overlay, self.app.pending_overlay = self.app.pending_overlay, None
        self.app.follow("dashboard", self.runs_shown())
        self.layout_plots()
        self.redraw()

    @on(ModelChanged)
    def model_changed(self, event: ModelChanged) -> None:
        if event.topic == "folder" and event.path in self.runs_shown():
            if event.path == self.run_dir and self.stage() != self.shown_stage:
                self.layout_plots()  # the run's stage is known now (or changed): its panels
            self.redraw(plots=True)
        elif event.topic == "runs" and self.run_dir is None and self.app.default_run() is not None:
            self.sync_with_app()  # the first run appeared

    def on_resize(self, event: Resize) -> None:
        self.layout_plots()
        self.redraw()

    def runs_shown(self) -> list[Path]:
        return ([self.run_dir] if self.run_dir else []) + [p for p in self.overlay if p != self.run_dir]

    def metrics_of(self, run_dir: Path) -> RunMetrics:
        return self.app.metrics.get(run_dir) or RunMetrics(run_dir)

    def stage(self) -> str:
        """The stage whose panels to show: the run's own (status.json, else its records)."""
        folder = self.app.model.folders.get(self.run_dir) if self.run_dir else None
        stage = (folder.status or {}).get("stage") if folder else None
        if stage not in PANELS and self.run_dir is not None:
            stage = self.metrics_of(self.run_dir).stage
        return stage if stage in PANELS else "pretrain"

    # ---- layout ----

    def layout_plots(self) -> None:
        columns, rows, bottom = grid_shape(self.size.width or 80, self.size.height or 24)
        grid = self.query_one("#dash-plots", Grid)
        grid.styles.grid_size_columns, grid.styles.grid_size_rows = columns, rows
        self.query_one("#dash-bottom").display = bottom
        self.per_page = columns * rows
        self.shown_stage = self.stage()
        pages = math.ceil(PLOT_COUNT / self.per_page)
        self.page = min(self.page, pages - 1)
        shown = [metric for metric, _ in PANELS[self.stage()]][self.page * self.per_page:(self.page + 1) * self.per_page]
        for metric in ALL_METRICS:
            self.query_one(f"#plot-{metric}", MetricPlot).display = metric in shown

    # ---- the panels ----

    def redraw(self, plots: bool = True) -> None:
        self.update_headline()
        self.update_log()
        if plots:
            self.update_sample()
            self.update_plots()

    def update_headline(self) -> None:
        headline = self.query_one("#dash-headline", Static)
        if self.run_dir is None:
            headline.update(f"No run to show: no runs in {self.app.runs_dir}. Press 1 for Runs, "
                            f"enter there starts the tiny run.")
            return
        folder = self.app.model.folders.get(self.run_dir)
        if folder is not None and folder.status is None and not self.run_dir.is_dir():
            headline.update(Text(f"{self.run_dir}: run folder missing (deleted or moved)", style="bold red"))
            return
        status = (folder.status if folder else None) or {}
        state = folder.state if folder else "missing"
        metrics = self.metrics_of(self.run_dir)
        line = Text()
        line.append(f"{self.run_dir.name}  ", style="bold")
        line.append(state, style=STATE_STYLES.get(state, ""))
        total = status.get("total_steps")
        step = status.get("step", 0)
        live = state in ("starting", "running", "stopping", "stalled")
        elapsed = metrics.elapsed(time.time() if live else None)
        eta = {"paused": "paused"}.get(state, runs.format_duration(status.get("eta_seconds")) if live else "-")
        best = status.get("best_val_bpb") or metrics.best_val_bpb
        last = metrics.last_train or {}
        # Most telling first: a narrow terminal cuts the line from the end.
        fields = [
            ("step", (f"{step}/{total}" if total else str(step))
             + (f" ({runs.format_duration(status['time_budget'])} budget)"
                if runs.is_number(status.get("time_budget")) else "")),
            ("elapsed", runs.format_duration(elapsed) if metrics.last_train else "-"),
            ("ETA", eta),
            ("loss", f"{last['loss']:.4f}" if runs.is_number(last.get("loss")) else "-"),
            ("tok/s", format_count(last.get("tokens_per_second"))),
            ("best val bpb", f"{best:.4f}" if runs.is_number(best) else "-"),
            ("tokens", format_count(status.get("tokens") or metrics.tokens)),
            ("MFU", f"{last['mfu']:.1f}%" if runs.is_number(last.get("mfu")) else "-"),
            ("stage", status.get("stage") or metrics.stage or "-"),
        ]
        for name, value in fields:
            line.append(f"  {name} ", style="dim")
            line.append(str(value))
        second = Text(" ")
        if self.overlay:
            for index, path in enumerate(self.runs_shown()):
                second.append(f"■ {path.name}  ", style=run_style(index))
        if metrics.bad_lines or (folder and folder.bad_lines):
            second.append(f"{max(metrics.bad_lines, folder.bad_lines if folder else 0)} corrupt metrics "
                          f"line(s) skipped  ", style="bold yellow")
        settings = f"x {self.x_axis}  smoothing {self.smoothing:g}  log y {'on' if self.log_y else 'off'}"
        pages = math.ceil(PLOT_COUNT / self.per_page)
        if pages > 1:
            settings += f"  plots {self.page + 1}/{pages} (←/→)"
        second.append(settings, style="dim")
        machine = self.machine_line(metrics, folder)
        if machine:
            second.append("  ")
            second.append_text(machine)
        lines = [line, second]
        if status.get("message"):
            lines.append(Text(f" {status['message']}", style="italic"))
        for each in lines:  # one line each, cut at the width: the plots keep their room
            each.truncate(max(1, headline.content_size.width or (self.size.width or 80) - 2), overflow="ellipsis")
        line = Text("\n").join(lines)
        headline.update(line)

    @staticmethod
    def machine_line(metrics: RunMetrics, folder) -> Text:
        """device, threads and memory as the run recorded them (its "sys" record) and as /proc
        shows its worker now."""
        line = Text()
        system = metrics.sys or {}
        device = system.get("device_name") or system.get("device")
        parts = []
        if isinstance(device, str) and device:
            parts.append(device if system.get("device") in (None, "cpu", device) else f"{system['device']} {device}")
        if runs.is_number(system.get("threads")):
            parts.append(f"{system['threads']:.0f} threads")
        if isinstance(system.get("dtype"), str):
            parts.append(system["dtype"])
        if folder is not None and folder.rss_bytes:
            parts.append(f"{folder.rss_bytes / 2**20:.0f} MB resident")
        if parts:
            line.append("  ".join(parts), style="dim")
        return line

    def update_sample(self) -> None:
        panel = self.query_one("#dash-sample", Static)
        sample = self.metrics_of(self.run_dir).last_sample if self.run_dir else None
        if not sample:
            panel.update(Text("no sample yet", style="dim"))
            return
        text = Text()
        text.append(f"step {sample.get('step')}: ", style="dim")
        text.append(str(sample.get("prompt", "")), style="bold")
        text.append(str(sample.get("text", "")))
        panel.update(text)

    def update_log(self) -> None:
        panel = self.query_one("#dash-log", Static)
        folder = self.app.model.folders.get(self.run_dir) if self.run_dir else None
        if folder is None or folder.log_tail is None:
            panel.update(Text("no train.log", style="dim"))
            return
        # As many of the newest lines as the panel shows, cut at its width rather than wrapped, so
        # the last line written is always in view.
        lines = folder.log_tail.splitlines()[-max(1, panel.content_size.height):]
        panel.update(Text("\n".join(lines), no_wrap=True, overflow="ellipsis"))

    def panel_lines(self, metric: str) -> list[Line]:
        """Every run's line in this panel, each in its run's colour."""
        lines: list[Line] = []
        for index, run_dir in enumerate(self.runs_shown()):
            metrics = self.metrics_of(run_dir)
            series = metrics.series[metric]
            xs = series.xs(self.x_axis)
            color = run_color(index)
            label = run_dir.name if self.overlay else None
            if metric == "loss":
                # The run itself: raw faint (its spread per column) and smoothed bold; overlaid
                # runs: smoothed only.
                if index == 0:
                    lines.append(Line("raw", xs, series.value, color="gray", envelope=True, mean_line=False))
                lines.append(Line(label or f"ema {self.smoothing:g}", xs, series.smoothed(self.smoothing),
                                  color=color))
            elif metric == "reward_mean" and index == 0:
                spread = metrics.series["reward_std"]
                if len(spread) == len(series):
                    lines.append(Line("± std", xs + xs, [m - s for m, s in zip(series.value, spread.value, strict=True)]
                                      + [m + s for m, s in zip(series.value, spread.value, strict=True)],
                                      color="gray", envelope=True, mean_line=False))
                lines.append(Line(label, xs, series.value, color=color, envelope=True))
            else:
                lines.append(Line(label, xs, series.value, color=color, envelope=True))
        return lines

    def update_plots(self) -> None:
        panels = PANELS[self.stage()]
        # One x range for every panel: from the first to the last point any run has on any panel.
        lows, highs = [], []
        for metric, _ in panels:
            for run_dir in self.runs_shown():
                xs = self.metrics_of(run_dir).series[metric].xs(self.x_axis)
                if xs:
                    lows.append(xs[0])
                    highs.append(max(xs[-1], xs[0]))
        x_range = (min(lows), max(highs)) if lows else None
        for metric, _ in panels:
            plot = self.query_one(f"#plot-{metric}", MetricPlot)
            plot.set_lines(self.panel_lines(metric), log_y=self.log_y and metric in LOG_METRICS,
                           x_label=self.x_axis, x_range=x_range)

    # ---- keys ----

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self.redraw()

    def action_cycle_x(self) -> None:
        self.x_axis = X_AXES[(X_AXES.index(self.x_axis) + 1) % len(X_AXES)]
        self.redraw()

    def action_smoothing(self, delta: int) -> None:
        self.smoothing_index = min(max(self.smoothing_index + delta, 0), len(SMOOTHING_STEPS) - 1)
        self.redraw()

    def action_page(self, delta: int) -> None:
        pages = math.ceil(PLOT_COUNT / self.per_page)
        self.page = (self.page + delta) % pages
        self.layout_plots()
        self.redraw()

    def action_overlay(self) -> None:
        # training runs only: an eval's or a prepare's folder has no curves to compare
        others = [info.path for info in self.app.model.runs
                  if info.path != self.run_dir and info.stage in TRAINING_STAGES]
        if not others:
            self.notify("no other runs to compare with", severity="warning")
            return
        names = {path.name: path for path in others}

        def chosen(picked: list[str] | None) -> None:
            if picked is not None:
                self.overlay = [names[name] for name in picked if name in names]
                self.app.follow("dashboard", self.runs_shown())
                self.redraw()

        self.app.push_screen(PickDialog("Overlay runs", list(names), [p.name for p in self.overlay]), chosen)

    def action_control(self, command: str) -> None:
        if self.run_dir is not None and self.run_dir.is_dir():
            control_run(self, self.run_dir, command)
