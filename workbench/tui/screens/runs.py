"""Runs (home): every run folder with its state, stage, step, loss, speed and ETA.

Polled once a second from the run folders themselves, so it shows runs started by another TUI,
by `picochat ... --detach` or before this TUI was opened.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from workbench import config as config_module
from workbench import runs, sweep
from workbench.tui.actions import control_run, resume_training
from workbench.tui.launch import LIVE_STATES
from workbench.tui.widgets.dialogs import ConfirmDialog

STATE_STYLES = {
    "running": "bold green", "starting": "green", "paused": "yellow", "stopping": "yellow",
    "done": "cyan", "failed": "bold red", "crashed": "bold red", "stalled": "bold magenta",
    "missing": "dim", "unknown": "dim",
}
COLUMNS = ("run", "state", "stage", "step", "loss", "tok/s", "ETA", "message")


def format_count(value: float | None) -> str:
    if not runs.is_number(value):  # None, or garbage from a run folder's JSON
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def run_row(info: runs.RunInfo) -> tuple:
    step = f"{info.step}/{info.total_steps}" if info.total_steps else str(info.step)
    loss = f"{info.loss:.4f}" if isinstance(info.loss, (int, float)) else "-"
    eta = runs.format_duration(info.eta_seconds) if info.state in LIVE_STATES else "-"
    if info.state == "paused":
        eta = "paused"
    message = info.message or ""
    if info.state == "crashed":  # the worker died without a word: say what can be done
        message = "worker gone without finishing; r resumes from the newest checkpoint"
    # DataTable reads str cells as Rich markup: a run folder's words are escaped to show as they are
    return (escape(info.name), Text(info.state, style=STATE_STYLES.get(info.state, "")), escape(info.stage or "-"),
            step, loss, format_count(info.tokens_per_second), eta, escape(message[:70]))


SWEEP_KEY = "sweep:"  # row key prefix of a sweep's header row (the other rows' keys are run folders)


def sweep_row(info: sweep.SweepInfo) -> tuple:
    best = info.best
    result = f"best val bpb {best['val_bpb']:.4f}: {best.get('label', best['name'])}" if best else "no point scored yet"
    return (Text(info.name, style="bold"), Text(info.state, style=STATE_STYLES.get(info.state, "yellow")),
            Text("sweep"), f"{info.done}/{len(info.points)}", "-", "-", "-", Text(f"{result}; o overlays its runs"))


def grouped_rows(infos: list[runs.RunInfo], sweeps: list[sweep.SweepInfo]) -> list[tuple[str, tuple]]:
    """(row key, row) in the runs' order (newest first), except that a sweep's runs come together,
    indented under a header row for the sweep, where its newest run would be."""
    by_name = {info.name: info for info in infos}
    member_of = {name: found for found in sweeps for name in found.run_names}
    entries = [(SWEEP_KEY + str(found.path), sweep_row(found)) for found in sweeps
               if not any(name in by_name for name in found.run_names)]  # no run folder yet: on top
    shown: set[Path] = set()
    for info in infos:
        found = member_of.get(info.name)
        if found is None:
            entries.append((str(info.path), run_row(info)))
        elif found.path not in shown:
            shown.add(found.path)
            entries.append((SWEEP_KEY + str(found.path), sweep_row(found)))
            for name in found.run_names:
                if name in by_name:
                    row = run_row(by_name[name])
                    entries.append((str(by_name[name].path), (Text("  " + by_name[name].name), *row[1:])))
    return entries


class RunsScreen(Screen):
    TITLE = "Runs"
    BINDINGS = [
        Binding("enter", "open_run", "Open", show=True),
        Binding("n", "new_run", "New run"),
        Binding("s", "control('stop')", "Stop"),
        Binding("p", "control('pause')", "Pause"),
        Binding("u", "control('resume')", "Unpause"),
        Binding("r", "resume_training", "Resume training"),
        Binding("d", "delete_run", "Delete"),
        Binding("o", "overlay_sweep", "Overlay sweep", show=False),  # a sweep row says so
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="runs-empty", classes="empty-state")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self._rows: list[tuple] = []
        self.refresh_runs()
        self.set_interval(1.0, self.refresh_runs)

    def on_screen_resume(self) -> None:
        self.refresh_runs()
        self.query_one(DataTable).focus()

    def refresh_runs(self) -> None:
        if not self.is_current:
            return  # nobody is looking: skip the disk reads
        infos = runs.list_runs(self.app.runs_dir)
        entries = grouped_rows(infos, sweep.list_sweeps(self.app.runs_dir))
        rows = [row for _, row in entries]
        table = self.query_one(DataTable)
        empty = self.query_one("#runs-empty", Static)
        empty.display = not entries
        table.display = bool(entries)
        if not entries:
            where = self.app.runs_dir
            missing = "" if where.is_dir() else f"The runs folder {where} does not exist yet.\n"
            empty.update(f"No runs in {where}.\n{missing}\n"
                         f"Press [b]n[/b] for a new run from configs/tiny.toml (edit it, then launch a stage),\n"
                         f"or start one from a shell:  picochat pretrain configs/tiny.toml --detach")
        if rows == self._rows:
            return
        self._rows = rows
        selected = self.selected_key()
        table.clear()
        for key, row in entries:
            table.add_row(*row, key=key)
        keys = [key for key, _ in entries]
        if selected in keys:
            table.move_cursor(row=keys.index(selected))

    def selected_key(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value or None

    def selected_run(self) -> Path | None:
        key = self.selected_key()
        return Path(key) if key and not key.startswith(SWEEP_KEY) else None

    def selected_sweep(self) -> sweep.SweepInfo | None:
        """The sweep of the selected row: its header row or one of its runs."""
        key = self.selected_key()
        if key and key.startswith(SWEEP_KEY):
            return sweep.read_sweep(key[len(SWEEP_KEY):])
        run_dir = self.selected_run()
        if run_dir is None:
            return None
        return next((found for found in sweep.list_sweeps(self.app.runs_dir) if run_dir.name in found.run_names), None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        key = self.selected_key()
        if key and key.startswith(SWEEP_KEY):
            self.action_overlay_sweep()
        elif (run_dir := self.selected_run()) is not None:
            self.app.open_run(run_dir)

    def action_overlay_sweep(self) -> None:
        """The dashboard on the sweep's best run (or its first), every other run of it overlaid."""
        found = self.selected_sweep()
        if found is None:
            self.notify("o overlays a sweep's runs: select a sweep or one of its runs", severity="warning")
            return
        folders = [found.path.parent / name for name in found.run_names if (found.path.parent / name).is_dir()]
        if not folders:
            self.notify(f"{found.name} has no run folders yet", severity="warning")
            return
        self.app.open_run(folders[0], overlay=folders[1:])

    def action_new_run(self) -> None:
        self.app.open_config(config_module.default_config_path())

    def action_control(self, command: str) -> None:
        if (run_dir := self.selected_run()) is not None:
            control_run(self, run_dir, command)

    def action_resume_training(self) -> None:
        run_dir = self.selected_run()
        if run_dir is None:
            return
        checkpoints = runs.list_checkpoints(run_dir)
        if not checkpoints:
            self.notify(f"{run_dir.name} has no checkpoint to resume from", severity="warning")
            return
        resume_training(self, checkpoints[-1])

    def action_delete_run(self) -> None:
        run_dir = self.selected_run()
        if run_dir is None:
            return
        state = runs.effective_state(runs.read_status(run_dir))
        if state in ("running", "starting", "paused", "stopping"):
            self.notify(f"{run_dir.name} is {state}: stop it (s) before deleting", severity="error")
            return

        def delete(confirmed: bool | None) -> None:
            if confirmed:
                shutil.rmtree(run_dir, ignore_errors=True)
                self.notify(f"deleted {run_dir}")
                self.refresh_runs()

        self.app.push_screen(ConfirmDialog(f"Delete run folder {run_dir} and all its checkpoints?"), delete)
