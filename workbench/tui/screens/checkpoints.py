"""Checkpoint browser: every checkpoint of every run with step, tokens, val bpb and size; mark two
to see how their configs differ; chat with one, evaluate it, resume training from it, export it,
or delete it."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import tomli_w
from rich.markup import escape
from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from workbench import runs
from workbench.errors import BadInput
from workbench.tui.actions import resume_training
from workbench.tui.launch import launch_quantize
from workbench.tui.screens.runs import format_count
from workbench.tui.widgets.dialogs import ConfirmDialog, PromptDialog

COLUMNS = ("", "run", "checkpoint", "stage", "step", "tokens", "val bpb", "size", "evals")


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def format_size(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def all_checkpoints(runs_dir: Path) -> list[Path]:
    """Every checkpoint of every run, by run name then step, with the INT8 copies
    `picochat quantize` writes to RUN/int8/step_N after the run's own checkpoints."""
    found = []
    for info in sorted(runs.list_runs(runs_dir), key=lambda info: info.name):
        found.extend(runs.list_checkpoints(info.path))
        int8 = info.path / "int8"
        if int8.is_dir():
            found.extend(sorted(p for p in int8.iterdir() if p.name.startswith("step_") and (p / "meta.json").exists()))
    return found


def checkpoint_name(path: Path) -> str:
    """step_000300, or int8/step_000300 for a quantized copy."""
    return path.name if path.parent.name == "checkpoints" else f"{path.parent.name}/{path.name}"


def config_as_toml(checkpoint: Path) -> str:
    data = runs.read_json_object(checkpoint / "config.json")
    if data is None:
        return f"# {checkpoint / 'config.json'}: missing or unreadable\n"
    try:
        return tomli_w.dumps(data)
    except (TypeError, ValueError, RecursionError) as error:
        return f"# config.json cannot be shown as TOML: {error}\n"


def config_diff(first: Path, second: Path) -> str:
    lines = difflib.unified_diff(config_as_toml(first).splitlines(), config_as_toml(second).splitlines(),
                                 fromfile=f"{first.parent.parent.name}/{first.name}",
                                 tofile=f"{second.parent.parent.name}/{second.name}", lineterm="")
    return "\n".join(lines) or "(the two configs are identical)"


class CheckpointsScreen(Screen):
    TITLE = "Checkpoints"
    BINDINGS = [
        Binding("space", "mark", "Mark (diff two)"),
        Binding("c", "chat", "Chat"),
        Binding("e", "evaluate", "Evaluate"),
        Binding("r", "resume", "Resume training"),
        Binding("x", "export", "Export"),
        Binding("i", "quantize", "INT8"),
        Binding("d", "delete", "Delete"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="ckpt-empty", classes="empty-state")
        yield DataTable(id="ckpt-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="ckpt-diff-box", classes="panel"):
            yield Static(Text("mark two checkpoints with space to compare their configs", style="dim"),
                         id="ckpt-diff")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.marked: list[Path] = []
        self.diff_text = ""
        self.shown: tuple = ()
        self.query_one("#ckpt-diff-box").border_title = "config diff"
        self.set_interval(2.0, self.refresh_if_changed)

    def on_screen_resume(self) -> None:
        self.sync_with_app()

    def sync_with_app(self) -> None:
        first_time = not self.shown
        self.refresh_table()
        current = self.app.current_run
        own = [p for p in all_checkpoints(self.app.runs_dir) if current and p.parent == current / "checkpoints"]
        if first_time and own:  # start on the newest checkpoint of the run being looked at
            self.query_one(DataTable).move_cursor(row=all_checkpoints(self.app.runs_dir).index(own[-1]))
        self.query_one(DataTable).focus()

    def state_on_disk(self, checkpoints: list[Path]) -> tuple:
        """What the table shows depends on: the folders and their meta/evals files."""
        stamps = []
        for path in checkpoints:
            for name in ("meta.json", "evals.json"):
                try:
                    stamps.append((path / name).stat().st_mtime)
                except OSError:
                    stamps.append(None)
        return tuple(checkpoints), tuple(stamps)

    def refresh_if_changed(self) -> None:
        """New checkpoints of a live run, an INT8 copy, new eval results: shown within seconds."""
        if self.is_current and self.state_on_disk(all_checkpoints(self.app.runs_dir)) != self.shown:
            self.refresh_table()

    def refresh_table(self) -> None:
        checkpoints = all_checkpoints(self.app.runs_dir)
        self.shown = self.state_on_disk(checkpoints)
        self.marked = [path for path in self.marked if path in checkpoints]
        table = self.query_one(DataTable)
        selected = self.selected()
        table.clear()
        for path in checkpoints:
            meta = runs.read_json_object(path / "meta.json") or {}
            evals = runs.read_json_object(path / "evals.json") or {}
            bpb = meta.get("val_bpb")
            # DataTable reads str cells as Rich markup: what the JSON files say is escaped to show as it is
            table.add_row("●" if path in self.marked else "", escape(path.parent.parent.name), checkpoint_name(path),
                          escape(str(meta.get("stage", "-"))), escape(str(meta.get("step", "-"))),
                          format_count(meta.get("tokens")),
                          f"{bpb:.4f}" if runs.is_number(bpb) else "-",
                          format_size(folder_size(path)), escape(", ".join(sorted(evals)) or "-"), key=str(path))
        empty = self.query_one("#ckpt-empty", Static)
        empty.display = not checkpoints
        empty.update(f"No checkpoints in {self.app.runs_dir} yet: a training run saves them every "
                     f"[train] save_every steps.")
        if selected in checkpoints:
            table.move_cursor(row=checkpoints.index(selected))

    def selected(self) -> Path | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return Path(row_key.value)

    def action_mark(self) -> None:
        path = self.selected()
        if path is None:
            return
        if path in self.marked:
            self.marked.remove(path)
        else:
            self.marked = (self.marked + [path])[-2:]
        self.refresh_table()
        diff = self.query_one("#ckpt-diff", Static)
        if len(self.marked) == 2:
            self.diff_text = config_diff(*self.marked)
            diff.update(Syntax(self.diff_text, "diff", theme="ansi_dark", background_color="default"))
        else:
            diff.update(Text(f"{len(self.marked)} of 2 marked", style="dim"))

    def action_chat(self) -> None:
        if (path := self.selected()) is not None:
            self.app.open_chat(path)

    def action_evaluate(self) -> None:
        if (path := self.selected()) is not None:
            self.app.open_eval(path)

    def action_resume(self) -> None:
        if (path := self.selected()) is not None:
            resume_training(self, path)

    def action_quantize(self) -> None:
        path = self.selected()
        if path is None:
            return
        try:
            launched = launch_quantize(path)
        except BadInput as error:
            self.notify(str(error), severity="error")
            return
        self.app.watch_launch(launched)
        self.notify(f"the INT8 copy of {path.name} will show here as int8/{path.name}")

    def action_export(self) -> None:
        path = self.selected()
        if path is None:
            return

        def export(target: str | None) -> None:
            if not target:
                return
            destination = Path(target).expanduser()
            if destination.exists():
                self.notify(f"{destination} already exists", severity="error")
                return
            try:
                shutil.copytree(path, destination)
            except OSError as error:
                self.notify(f"export failed: {error}", severity="error")
                return
            self.notify(f"exported {path.name} to {destination}")

        default = f"exports/{path.parent.parent.name}-{path.name}"
        self.app.push_screen(PromptDialog(f"Copy {path.name} to:", default), export)

    def action_delete(self) -> None:
        path = self.selected()
        if path is None:
            return

        def delete(confirmed: bool | None) -> None:
            if confirmed:
                shutil.rmtree(path, ignore_errors=True)
                self.notify(f"deleted {path}")
                self.refresh_table()

        self.app.push_screen(ConfirmDialog(f"Delete checkpoint {path}?"), delete)
