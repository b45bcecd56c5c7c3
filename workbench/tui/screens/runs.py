"""Runs (home): every run folder with its state, stage, step, loss, speed and ETA.

Polled once a second from the run folders themselves, so it shows runs started by another TUI,
by `picochat ... --detach` or before this TUI was opened.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from workbench import config as config_module
from workbench import runs
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
    if value is None:
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
    return (info.name, Text(info.state, style=STATE_STYLES.get(info.state, "")), info.stage or "-", step,
            loss, format_count(info.tokens_per_second), eta, message[:70])


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
        rows = [run_row(info) for info in infos]
        table = self.query_one(DataTable)
        empty = self.query_one("#runs-empty", Static)
        empty.display = not infos
        table.display = bool(infos)
        if not infos:
            where = self.app.runs_dir
            missing = "" if where.is_dir() else f"The runs folder {where} does not exist yet.\n"
            empty.update(f"No runs in {where}.\n{missing}\n"
                         f"Press [b]n[/b] for a new run from configs/tiny.toml (edit it, then launch a stage),\n"
                         f"or start one from a shell:  picochat pretrain configs/tiny.toml --detach")
        if rows == self._rows:
            return
        self._rows = rows
        selected = self.selected_run()
        table.clear()
        for info, row in zip(infos, rows, strict=True):
            table.add_row(*row, key=str(info.path))
        if selected is not None:
            keys = [str(info.path) for info in infos]
            if str(selected) in keys:
                table.move_cursor(row=keys.index(str(selected)))

    def selected_run(self) -> Path | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return Path(row_key.value) if row_key.value else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        run_dir = self.selected_run()
        if run_dir is not None:
            self.app.open_run(run_dir)

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
