"""Live training dashboard: loss (raw and smoothed), validation bpb, learning rate, tokens/s, MFU and
grad norm; headline numbers; the latest sample; the tail of train.log.

Polls the run folder twice a second while visible, reading only the new bytes of metrics.jsonl, and
redraws the plots only when something arrived or a setting changed.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from workbench import runs
from workbench.tui.actions import control_run
from workbench.tui.screens.runs import STATE_STYLES, format_count
from workbench.tui.series import X_AXES, RunMetrics
from workbench.tui.widgets.dialogs import PickDialog
from workbench.tui.widgets.plot import Line, MetricPlot

PLOTS = {  # widget id -> (metric, title)
    "plot-loss": ("loss", "loss"),
    "plot-val": ("val_bpb", "val bpb"),
    "plot-lr": ("lr", "learning rate (x base)"),
    "plot-tps": ("tokens_per_second", "tokens/s"),
    "plot-mfu": ("mfu", "MFU %"),
    "plot-grad": ("grad_norm", "grad norm"),
}
SMOOTHING_STEPS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
LOG_TAIL_BYTES = 8192


def read_log_tail(path: Path, lines: int) -> str | None:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    return "\n".join(text.splitlines()[-lines:])


class DashboardScreen(Screen):
    TITLE = "Dashboard"
    BINDINGS = [
        Binding("l", "toggle_log", "Log y"),
        Binding("x", "cycle_x", "X axis"),
        Binding("left_square_bracket", "smoothing(-1)", "Smooth -"),
        Binding("right_square_bracket", "smoothing(1)", "Smooth +"),
        Binding("o", "overlay", "Overlay"),
        Binding("s", "control('stop')", "Stop"),
        Binding("p", "control('pause')", "Pause"),
        Binding("u", "control('resume')", "Unpause"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="dash-headline")
        with Grid(id="dash-plots"):
            for plot_id, (_, title) in PLOTS.items():
                yield MetricPlot(title, id=plot_id)
        with Horizontal(id="dash-bottom"):
            yield Static(id="dash-sample", classes="panel")
            yield Static(id="dash-log", classes="panel")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.run_dir: Path | None = None
        self.metrics: dict[Path, RunMetrics] = {}  # the run first, then overlaid runs
        self.overlay: list[Path] = []
        self.log_y = False
        self.x_axis = "step"
        self.smoothing_index = SMOOTHING_STEPS.index(0.9)
        self.query_one("#dash-sample", Static).border_title = "latest sample"
        self.query_one("#dash-log", Static).border_title = "train.log"
        self.set_interval(0.5, self.poll)

    @property
    def smoothing(self) -> float:
        return SMOOTHING_STEPS[self.smoothing_index]

    def on_screen_resume(self) -> None:
        self.sync_with_app()

    def sync_with_app(self) -> None:
        run_dir = self.app.current_run
        if run_dir is None:
            infos = runs.list_runs(self.app.runs_dir)
            run_dir = infos[0].path if infos else None
            self.app.current_run = run_dir
        if run_dir != self.run_dir:
            self.run_dir = run_dir
            self.overlay = []
            self.metrics = {}
        if self.app.pending_overlay is not None:  # opened on a sweep: its other runs overlaid
            self.overlay, self.app.pending_overlay = self.app.pending_overlay, None
        self.poll(force=True)

    def poll(self, force: bool = False) -> None:
        if not self.is_current:
            return  # redraw only while visible
        changed = force
        for run_dir in self.runs_shown():
            if run_dir not in self.metrics:
                self.metrics[run_dir] = RunMetrics(run_dir)
            changed |= self.metrics[run_dir].poll() > 0
        self.update_headline()
        self.update_log()
        if changed:
            self.update_sample()
            self.update_plots()

    def runs_shown(self) -> list[Path]:
        return ([self.run_dir] if self.run_dir else []) + [p for p in self.overlay if p != self.run_dir]

    # ---- the panels ----

    def update_headline(self) -> None:
        headline = self.query_one("#dash-headline", Static)
        if self.run_dir is None:
            headline.update(f"No run to show: no runs in {self.app.runs_dir}. Press 1 for Runs, "
                            f"n there for a new run.")
            return
        if not self.run_dir.is_dir():
            headline.update(Text(f"{self.run_dir}: run folder missing (deleted or moved)", style="bold red"))
            return
        status = runs.read_status(self.run_dir) or {}
        state = runs.effective_state(status or None)
        metrics = self.metrics.get(self.run_dir)
        line = Text()
        line.append(f"{self.run_dir.name}  ", style="bold")
        line.append(state, style=STATE_STYLES.get(state, ""))
        total = status.get("total_steps")
        step = status.get("step", 0)
        started = status.get("started")
        finished = state in ("done", "failed", "crashed")
        end = status.get("heartbeat") if finished else time.time()
        elapsed = None
        if started and end:  # time spent training: pauses are left out
            elapsed = metrics.active_seconds(started, end) if metrics else end - started
        if finished:
            eta = "-"
        elif state == "paused":
            eta = "paused"
        else:
            eta = runs.format_duration(status.get("eta_seconds"))
        best = status.get("best_val_bpb") or (metrics.best_val_bpb if metrics else None)
        fields = [
            ("stage", status.get("stage") or "-"),
            ("step", (f"{step}/{total}" if total else str(step))
             + (f" ({runs.format_duration(status['time_budget'])} budget)"
                if isinstance(status.get("time_budget"), (int, float)) else "")),
            ("tokens", format_count(status.get("tokens") or (metrics.tokens if metrics else 0))),
            ("elapsed", runs.format_duration(elapsed)),
            ("ETA", eta),
            ("best val bpb", f"{best:.4f}" if isinstance(best, (int, float)) else "-"),
        ]
        if metrics and metrics.last_train:
            last = metrics.last_train
            if isinstance(last.get("loss"), (int, float)):
                fields.append(("loss", f"{last['loss']:.4f}"))
            fields.append(("tok/s", format_count(last.get("tokens_per_second"))))
            if isinstance(last.get("mfu"), (int, float)):
                fields.append(("MFU", f"{last['mfu']:.1f}%"))
        for name, value in fields:
            line.append(f"   {name} ", style="dim")
            line.append(str(value))
        settings = f"x: {self.x_axis}   smoothing: {self.smoothing:g}   log y: {'on' if self.log_y else 'off'}"
        if self.overlay:
            settings += f"   overlay: {', '.join(p.name for p in self.overlay)}"
        line.append(f"\n{settings}", style="dim")
        if metrics and metrics.bad_lines:
            line.append(f"   {metrics.bad_lines} corrupt metrics line(s) skipped", style="bold yellow")
        if status.get("message"):
            line.append(f"\n{status['message']}", style="italic")
        headline.update(line)

    def update_sample(self) -> None:
        panel = self.query_one("#dash-sample", Static)
        metrics = self.metrics.get(self.run_dir) if self.run_dir else None
        sample = metrics.last_sample if metrics else None
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
        # As many of the newest lines as the panel shows, cut at its width rather than wrapped, so
        # the last line written is always in view.
        tail = read_log_tail(self.run_dir / "train.log", max(1, panel.content_size.height)) if self.run_dir else None
        if tail is None:
            panel.update(Text("no train.log", style="dim"))
        else:
            panel.update(Text(tail, no_wrap=True, overflow="ellipsis"))

    def update_plots(self) -> None:
        for plot_id, (metric, _) in PLOTS.items():
            lines: list[Line] = []
            for index, run_dir in enumerate(self.runs_shown()):
                series = self.metrics[run_dir].series[metric]
                xs = series.xs(self.x_axis)
                label = run_dir.name if self.overlay else metric
                if metric == "loss":
                    # The run itself: raw faint (its spread per column) and smoothed bold; overlaid
                    # runs: smoothed only.
                    if index == 0:
                        lines.append(Line("raw", xs, series.value, color="gray", envelope=True, mean_line=False))
                    lines.append(Line(f"{label} (ema {self.smoothing:g})" if not self.overlay else label,
                                      xs, series.smoothed(self.smoothing)))
                else:
                    lines.append(Line(label, xs, series.value, envelope=True))
            plot = self.query_one(f"#{plot_id}", MetricPlot)
            plot.set_lines(lines, log_y=self.log_y and metric in ("loss", "val_bpb", "grad_norm"),
                           x_label=self.x_axis if self.x_axis != "time" else "seconds")

    # ---- keys ----

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self.poll(force=True)

    def action_cycle_x(self) -> None:
        self.x_axis = X_AXES[(X_AXES.index(self.x_axis) + 1) % len(X_AXES)]
        self.poll(force=True)

    def action_smoothing(self, delta: int) -> None:
        self.smoothing_index = min(max(self.smoothing_index + delta, 0), len(SMOOTHING_STEPS) - 1)
        self.poll(force=True)

    def action_overlay(self) -> None:
        others = [info.path for info in runs.list_runs(self.app.runs_dir) if info.path != self.run_dir]
        if not others:
            self.notify("no other runs to compare with", severity="warning")
            return
        names = {path.name: path for path in others}

        def chosen(picked: list[str] | None) -> None:
            if picked is not None:
                self.overlay = [names[name] for name in picked if name in names]
                self.poll(force=True)

        self.app.push_screen(PickDialog("Overlay runs", list(names), [p.name for p in self.overlay]), chosen)

    def action_control(self, command: str) -> None:
        if self.run_dir is not None and self.run_dir.is_dir():
            control_run(self, self.run_dir, command)
