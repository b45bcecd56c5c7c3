"""Checkpoint browser: every checkpoint of every run (INT8 copies too) with step, tokens, val bpb
(training's, else what an eval or quantize measured) and the size of its weights beside the whole
folder (which holds the optimizer state too); mark two to see how their configs differ; chat with
one, evaluate it, resume training from it, export it, or delete it. Rows come from the app's model."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import tomli_w
from rich.cells import cell_len
from rich.markup import escape
from rich.syntax import Syntax
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from workbench import checkpoint_files
from workbench.tui.actions import launch_and_watch, resume_training
from workbench.tui.launch import launch_quantize
from workbench.tui.model import CheckpointInfo, ModelChanged, checkpoint_name
from workbench.tui.screens.runs import format_count
from workbench.tui.widgets.common import KeyTable, NavBar
from workbench.tui.widgets.dialogs import ConfirmDialog, PromptDialog

# weights: model.safetensors; disk: the whole folder (optimizer state too, what delete frees).
COLUMNS = ("run", "checkpoint", "stage", "step", "tokens", "val bpb", "weights", "disk", "evals")
# Below this many terminal columns weights gives way, and the evals list is cut to what is left,
# so that every column shows at 80 columns.
NARROW = 100
NARROW_COLUMNS = tuple(column for column in COLUMNS if column != "weights")


def format_size(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def config_as_toml(checkpoint: Path) -> str:
    data = checkpoint_files.read_config(checkpoint)
    if not data:
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
        Binding("space", "mark", "Mark 2: diff"),
        Binding("c", "chat", "Chat"),
        Binding("e", "evaluate", "Eval"),
        Binding("i", "quantize", "INT8"),
        Binding("r", "resume", "Resume"),
        Binding("x", "export", "Export"),
        Binding("d", "delete", "Delete"),
    ]

    def compose(self) -> ComposeResult:
        yield NavBar("checkpoints")
        yield Static(id="ckpt-empty", classes="empty-state")
        yield KeyTable(id="ckpt-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="ckpt-diff-box", classes="panel"):
            yield Static(Text("mark two checkpoints with space to compare their configs", style="dim"),
                         id="ckpt-diff")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.columns: tuple[str, ...] = ()
        self.set_columns()
        self.marked: list[Path] = []
        self.diff_text = ""
        self.shown: list[CheckpointInfo] | None = None
        self.query_one("#ckpt-diff-box").border_title = "config diff"

    def on_screen_resume(self) -> None:
        self.sync_with_app()

    def on_resize(self) -> None:
        if self.set_columns():
            self.shown = None
            self.refresh_table()

    def set_columns(self) -> bool:
        """The columns for this terminal's width; whether they changed."""
        columns = COLUMNS if (self.app.size.width or 80) >= NARROW else NARROW_COLUMNS
        if columns == self.columns:
            return False
        self.columns = columns
        table = self.query_one(DataTable)
        table.clear(columns=True)
        for column in columns:
            table.add_column(column, key=column)
        return True

    def sync_with_app(self) -> None:
        first_time = self.shown is None
        self.refresh_table()
        current = self.app.current_run
        paths = self.app.model.checkpoint_paths()
        own = [p for p in paths if current and p.parent == current / "checkpoints"]
        if first_time and own:  # start on the newest checkpoint of the run being looked at
            self.query_one(DataTable).move_cursor(row=paths.index(own[-1]))
        self.query_one(DataTable).focus()

    @on(ModelChanged)
    def model_changed(self, event: ModelChanged) -> None:
        """New checkpoints of a live run, an INT8 copy, new eval results: shown within seconds."""
        if event.topic == "checkpoints":
            self.refresh_table()

    def refresh_table(self) -> None:
        checkpoints = self.app.model.checkpoints
        if checkpoints == self.shown:
            return
        self.shown = checkpoints
        paths = [info.path for info in checkpoints]
        self.marked = [path for path in self.marked if path in paths]
        table = self.query_one(KeyTable)
        selected = self.selected()
        rows = []
        for info in checkpoints:
            path, meta = info.path, info.meta
            bpb = info.val_bpb
            # a folder without meta.json (a model copied in) loads all the same: its step is its name's
            bare = not (path / "meta.json").exists()
            step = meta.get("step", "-")
            if bare and checkpoint_files.step_number(path) >= 0:
                step = checkpoint_files.step_number(path)
            rows.append({
                "run": ("● " if path in self.marked else "") + path.parent.parent.name,
                "checkpoint": checkpoint_name(path), "stage": "no meta.json" if bare else str(meta.get("stage", "-")),
                "step": str(step), "tokens": format_count(meta.get("tokens")),
                "val bpb": f"{bpb:.4f}" if bpb is not None else "-",
                "weights": format_size(info.model_bytes) if info.model_bytes else "-",
                "disk": format_size(info.total_bytes), "evals": ", ".join(sorted(info.evals)) or "-"})
        if self.columns == NARROW_COLUMNS:
            room = self.evals_room(rows)
            for row in rows:
                if cell_len(row["evals"]) > room:
                    row["evals"] = row["evals"][:room - 1].rstrip(", ") + "…"
        # DataTable reads str cells as Rich markup: what the JSON files say is escaped to show as it is
        table.replace_rows([(str(info.path), tuple(escape(row[column]) for column in self.columns))
                            for info, row in zip(checkpoints, rows, strict=True)])
        empty = self.query_one("#ckpt-empty", Static)
        empty.display = not checkpoints
        empty.update(f"No checkpoints in {self.app.runs_dir} yet: a training run saves them every "
                     f"[train] save_every steps.")
        if selected in paths:
            table.move_cursor(row=paths.index(selected))

    def evals_room(self, rows: list[dict[str, str]]) -> int:
        """What the other columns (each with a cell of padding either side) and the scrollbar leave."""
        others = sum(max(cell_len(text) for text in [column] + [row[column] for row in rows]) + 2
                     for column in self.columns if column != "evals")
        return max(6, (self.app.size.width or 80) - others - 2 - 2)

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
        self.shown = None
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
        if launch_and_watch(self, launch_quantize, path):
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
                self.notify(f"deleted {path}", markup=False)
                self.app.watcher.read_now(everything=True)

        self.app.push_screen(ConfirmDialog(f"Delete checkpoint {path}?"), delete)
