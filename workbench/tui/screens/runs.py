"""Runs (home): every run folder with its state, stage, step, loss, speed and ETA; `/` filters
them by name. With no runs yet, a welcome panel offers the tiny run (enter starts it).

The rows come from the app's model (the watcher reads the run folders), so they show runs started
by another TUI, by `picochat ... --detach` or before this TUI was opened.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from workbench import runs, stages, sweep
from workbench.errors import BadInput
from workbench.runs import LIVE_STATES
from workbench.tui.actions import control_run, resume_training
from workbench.tui.launch import (
    display_path,
    first_run_config,
    launch_first_run,
    new_config,
    user_config_dir,
)
from workbench.tui.model import ModelChanged
from workbench.tui.widgets.common import KeyTable, NavBar
from workbench.tui.widgets.dialogs import ConfirmDialog

STATE_STYLES = {
    "running": "bold green", "starting": "green", "paused": "yellow", "stopping": "yellow",
    "done": "cyan", "stopped": "yellow", "failed": "bold red", "crashed": "bold red", "stalled": "bold magenta",
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


def run_row(info: runs.RunInfo, message_width: int = 70) -> tuple:
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
            step, loss, format_count(info.tokens_per_second), eta, escape(cut(message, message_width)))


SWEEP_KEY = "sweep:"  # row key prefix of a sweep's header row (the other rows' keys are run folders)


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(1, width - 1)] + "…"


def sweep_row(info: sweep.SweepInfo, message_width: int = 70) -> tuple:
    best = info.best
    result = f"best val bpb {best['val_bpb']:.4f}: {best.get('label', best['name'])}" if best else "no point scored yet"
    return (Text(info.name, style="bold"), Text(info.state, style=STATE_STYLES.get(info.state, "yellow")),
            Text("sweep"), f"{info.done}/{len(info.points)}", "-", "-", "-",
            Text(cut(f"{result}; o overlays its runs", message_width)))


def grouped_rows(infos: list[runs.RunInfo], sweeps: list[sweep.SweepInfo],
                 message_width: int = 70) -> list[tuple[str, tuple]]:
    """(row key, row) in the runs' order (newest first), except that a sweep's runs come together,
    indented under a header row for the sweep, where its newest run would be. Messages are cut to
    message_width, so the table fits the terminal."""
    entries = []
    for depth, item in sweep.grouped(infos, sweeps):
        if isinstance(item, sweep.SweepInfo):
            entries.append((SWEEP_KEY + str(item.path), sweep_row(item, message_width)))
        else:
            row = run_row(item, message_width)
            entries.append((str(item.path), (Text("  " + item.name), *row[1:]) if depth else row))
    return entries


def matches(row_key: str, row: tuple, text: str) -> bool:
    return not text or text.lower() in str(row[0]).lower() or text.lower() in Path(row_key).name.lower()


class RunsScreen(Screen):
    TITLE = "Runs"
    BINDINGS = [
        Binding("enter", "open_run", "Open", show=True),
        Binding("n", "new_run", "New run"),
        Binding("p", "control('pause')", "Pause"),
        Binding("u", "control('resume')", "Unpause"),
        Binding("s", "control('stop')", "Stop"),
        Binding("r", "resume_training", "Resume"),
        Binding("d", "delete_run", "Delete"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("o", "overlay_sweep", "Overlay sweep", show=False),  # a sweep row says so
        Binding("escape", "clear_filter", "Clear filter, close", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield NavBar("runs")
        yield Static(id="runs-empty", classes="empty-state")
        # disabled while hidden: nothing focuses it until / asks
        yield Input(placeholder="filter runs by name (enter keeps it, escape clears)", id="runs-filter",
                    disabled=True)
        yield KeyTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self._rows: list[tuple] = []
        self._keys: list[str] = []
        self.filter_text = ""
        self.query_one("#runs-filter", Input).display = False
        self.refresh_runs()

    def on_screen_resume(self) -> None:
        self.refresh_runs()
        table = self.query_one(DataTable)
        if table.display:
            table.focus()

    @on(ModelChanged)
    def model_changed(self, event: ModelChanged) -> None:
        if event.topic == "runs":
            self.refresh_runs()

    def on_resize(self) -> None:
        self.refresh_runs()

    def refresh_runs(self) -> None:
        model = self.app.model
        width = max(16, (self.size.width or 80) - 66)  # what the other columns leave of the terminal
        entries = [(key, row) for key, row in grouped_rows(model.runs, model.sweeps, width)
                   if key.startswith(SWEEP_KEY) or matches(key, row, self.filter_text)]
        table = self.query_one(KeyTable)
        empty = self.query_one("#runs-empty", Static)
        welcome = model.listed and not model.runs and not model.sweeps
        empty.display = welcome
        table.display = not welcome
        if table.display and self.focused is None:
            table.focus()
        if welcome:
            empty.update(self.welcome_text())
            if self.focused is table:
                self.set_focus(None)  # enter is the welcome's, not the hidden table's
        rows = [row for _, row in entries]
        if rows == self._rows:
            return
        keys = [key for key, _ in entries]
        if keys == self._keys:  # the same runs: change the cells that changed, columns widen to fit
            for (key, row), old in zip(entries, self._rows, strict=True):
                for column, value, before in zip(COLUMNS, row, old, strict=True):
                    if value != before:
                        table.update_cell(key, column, value, update_width=True)
            self._rows = rows
            return
        self._rows, self._keys = rows, keys
        selected = self.selected_key()
        table.replace_rows(entries)
        if selected in keys:
            table.move_cursor(row=keys.index(selected))

    def welcome_text(self) -> Text:
        where = self.app.runs_dir
        config = first_run_config()
        text = Text()
        text.append("Welcome to picochat\n\n", style="bold")
        text.append(f"No runs in {where}/ yet.\n\n" if where.is_dir() else f"No runs yet: {where}/ does not exist.\n\n")
        text.append(" enter ", style="bold reverse")
        text.append("  start the tiny run: prepare, tokenizer, pretraining\n")
        text.append("         (a 2-layer model on bundled text; minutes on a laptop CPU)\n")
        shown = (display_path(config) if config.parent == user_config_dir()
                 else "a copy of the tiny config, written to configs/tiny.toml")
        text.append(f"         config: {shown}\n\n")
        text.append("   n   ", style="bold reverse")
        text.append("  a new run: edit a copy of the tiny config first\n\n")
        text.append("   ?   ", style="bold reverse")
        text.append("  every key of a screen;  q quits (training goes on)\n\n")
        text.append("From a shell: picochat speedrun configs/tiny.toml --until pretrain", style="dim")
        return text

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
        return next((found for found in self.app.model.sweeps if run_dir.name in found.run_names), None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        if self.app.model.listed and not self.app.model.runs and not self.app.model.sweeps:
            self.start_first_run()
            return
        key = self.selected_key()
        if key and key.startswith(SWEEP_KEY):
            self.action_overlay_sweep()
        elif (run_dir := self.selected_run()) is not None:
            # Each folder on the screen that shows it: an eval's on Evals (RUN-eval is the eval of RUN),
            # a prepare's or a tokenizer's on Data, a training run on the Dashboard.
            stage = next((info.stage for info in self.app.model.runs if info.path == run_dir), "")
            base, folder_stage = stages.split_folder(run_dir)
            if stage == "eval" and folder_stage == "eval" and base.is_dir():
                self.app.open_run(base, "evals")
            else:
                self.app.open_run(run_dir, {"prepare": "data", "tokenizer": "data"}.get(stage, "dashboard"))

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

    def start_first_run(self) -> None:
        try:
            launched = launch_first_run(self.app.runs_dir)
        except BadInput as error:
            self.notify(str(error), severity="error", markup=False, timeout=15)
            return
        self.app.watch_launch(launched)
        self.app.open_run(launched.run_dir)

    def action_new_run(self) -> None:
        try:
            path = new_config(self.app.runs_dir)
        except (BadInput, OSError) as error:
            self.notify(str(error), severity="error", markup=False, timeout=15)
            return
        self.notify(f"wrote {display_path(path)}: a run of its own ([run] name {path.stem}); edit it, "
                    f"then ctrl+l launches a stage", markup=False)
        self.app.open_config(path)

    def action_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        box.display, box.disabled = True, False
        box.focus()

    @on(Input.Changed, "#runs-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.refresh_runs()

    @on(Input.Submitted, "#runs-filter")
    def filter_kept(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()
        event.input.display = bool(self.filter_text)  # kept on view while it filters
        event.input.disabled = True

    def action_clear_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        if box.display:
            box.value, box.display, box.disabled = "", False, True
            self.query_one(DataTable).focus()
        else:
            self.app.action_close_panel()  # escape closes the keys panel here as everywhere

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
        if state in LIVE_STATES:
            self.notify(f"{run_dir.name} is {state}: stop it (s) before deleting", severity="error")
            return

        def delete(confirmed: bool | None) -> None:
            if confirmed:
                shutil.rmtree(run_dir, ignore_errors=True)
                self.notify(f"deleted {run_dir}", markup=False)
                self.app.watcher.read_now(everything=True)

        self.app.push_screen(ConfirmDialog(f"Delete run folder {run_dir} and all its checkpoints?"), delete)
