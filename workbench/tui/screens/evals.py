"""Eval runner: pick a checkpoint (INT8 copies too) and tasks, run `picochat eval` as a detached
worker, watch its progress (the app follows RUN-eval/), and see the results next to earlier results
of the same run (each checkpoint's evals.json, from the app's model).
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import (
    Button,
    Footer,
    Input,
    Label,
    ProgressBar,
    Select,
    Static,
)

from workbench import checkpoint_files, runs, stages
from workbench.errors import BadInput
from workbench.evals.common import headline_score
from workbench.tui.launch import EVAL_TASKS, launch_eval
from workbench.tui.model import ModelChanged, checkpoint_name
from workbench.tui.widgets.common import KeyTable, NavBar, TickList


def eval_folder(checkpoint: Path) -> Path:
    """Where `picochat eval` of a checkpoint logs its progress: RUN-eval beside the run."""
    return stages.folder(checkpoint.parent.parent, "eval")


def score_text(task: str, result) -> str:
    """An evals.json entry's headline number (bpb, the CORE / ChatCORE figure, or the accuracy),
    as the eval CLI and the report pick it; a bare number is taken as it is."""
    value = result if runs.is_number(result) else headline_score(task, result) if isinstance(result, dict) else None
    return f"{value:.4f}" if runs.is_number(value) else "-"


class EvalsScreen(Screen):
    TITLE = "Evals"
    BINDINGS = [Binding("ctrl+r", "run_eval", "Run eval", priority=True)]

    def compose(self) -> ComposeResult:
        yield NavBar("evals")
        with Horizontal(id="eval-top"):
            with Vertical(id="eval-choose"):
                yield Label("checkpoint")
                yield Select([], prompt="pick a checkpoint", id="eval-checkpoint")
                yield Label("tasks (space ticks)")
                yield TickList[str](*[(task, task, task == "bpb") for task in EVAL_TASKS], id="eval-tasks")
                yield Label("examples per task (0 = all)")
                yield Input("50", type="integer", id="eval-limit")
                yield Button("Run eval (ctrl+r)", variant="success", id="eval-run")
            with Vertical(id="eval-watch"):
                yield Static(id="eval-status")
                yield ProgressBar(id="eval-progress", show_eta=False)
                yield KeyTable(id="eval-results", zebra_stripes=True)
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.checkpoint: Path | None = None
        self.launched_here = False  # an eval started from here: its progress stays shown after it ends

    def on_screen_resume(self) -> None:
        self.sync_with_app()

    def sync_with_app(self) -> None:
        checkpoints = self.app.model.checkpoint_paths()
        picker = self.query_one("#eval-checkpoint", Select)
        picker.set_options([(checkpoint_files.checkpoint_label(p), str(p)) for p in checkpoints])
        wanted = self.app.eval_checkpoint or self.checkpoint
        if wanted is None and self.app.current_run is not None:
            own = [p for p in checkpoints if p.parent.parent == self.app.current_run]
            wanted = own[-1] if own else None
        if wanted is None and checkpoints:
            wanted = checkpoints[-1]
        if wanted is not None and wanted in checkpoints:
            picker.value = str(wanted)
            self.set_checkpoint(wanted)
        self.show_results()  # what arrived while another screen was on view
        self.show_status()

    @on(ModelChanged)
    def model_changed(self, event: ModelChanged) -> None:
        if event.topic == "checkpoints":
            self.show_results()
        elif event.topic == "folder" and self.checkpoint is not None and event.path == eval_folder(self.checkpoint):
            self.show_status()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "eval-checkpoint" and event.value is not Select.NULL:
            self.set_checkpoint(Path(str(event.value)))

    def set_checkpoint(self, checkpoint: Path) -> None:
        if checkpoint == self.checkpoint:
            return
        self.checkpoint = checkpoint
        self.app.eval_checkpoint = checkpoint
        # Start from what the run's config asks for ([eval] tasks and limit).
        section = checkpoint_files.read_config(checkpoint).get("eval")
        section = section if isinstance(section, dict) else {}
        tasks = section.get("tasks")
        wanted = [task for task in tasks if task in EVAL_TASKS] if isinstance(tasks, list) else []
        if wanted:
            tasks = self.query_one("#eval-tasks", TickList)
            tasks.deselect_all()
            for task in wanted:
                tasks.select(task)
        if isinstance(section.get("limit"), int):
            self.query_one("#eval-limit", Input).value = str(section["limit"])
        self.launched_here = False
        self.app.follow("evals", [eval_folder(checkpoint)])
        self.show_results()
        self.show_status()

    def show_status(self) -> None:
        """The progress of the eval of this checkpoint that runs now, else what to do: never the
        progress of another checkpoint's eval."""
        status = self.query_one("#eval-status", Static)
        progress = self.query_one(ProgressBar)
        if self.checkpoint is None:
            status.update(Text("no checkpoints yet: train a run first (Config screen, stage pretrain)", style="dim"))
            progress.display = False
            return
        folder = self.app.model.folders.get(eval_folder(self.checkpoint))
        metrics = self.app.metrics.get(eval_folder(self.checkpoint))
        record = metrics.last_progress if metrics else None
        ours = record is not None and metrics.eval_checkpoint == str(self.checkpoint.resolve())
        live = folder is not None and folder.state in ("starting", "running", "stopping")
        if record and ours and (live or self.launched_here):
            done, total = record.get("done") or 0, record.get("total")
            progress.display = True
            progress.update(total=total or None, progress=done)
            state = "" if live else f" ({folder.state if folder else 'ended'})"
            status.update(Text(f"eval of {checkpoint_files.checkpoint_label(self.checkpoint)}: {done:.0f}/{total or '?'} "
                               f"{record.get('unit', '')} of {record.get('task', '')}{state}"))
        else:
            progress.display = False  # no idle animation when nothing runs
            status.update(Text(f"{checkpoint_files.checkpoint_label(self.checkpoint)}: pick tasks, ctrl+r runs them"))

    def show_results(self) -> None:
        """One row per checkpoint of the run that has evals.json (INT8 copies too), one column per task."""
        table = self.query_one("#eval-results", KeyTable)
        table.clear(columns=True)
        if self.checkpoint is None:
            return
        model = self.app.model
        results = {}
        for path in checkpoint_files.with_int8_copies(self.checkpoint.parent.parent):
            info = model.checkpoint(path)
            if info is not None and info.evals:
                results[path] = info.evals
        tasks = sorted({task for data in results.values() for task in data})
        table.add_columns("checkpoint", *[escape(task) for task in tasks])  # str labels are markup
        table.replace_rows([(str(path), (Text(checkpoint_name(path), style="bold" if path == self.checkpoint else ""),
                                         *[score_text(task, data.get(task)) for task in tasks]))
                            for path, data in results.items()])
        if not results:
            table.add_column("no results yet")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "eval-run":
            self.action_run_eval()

    def action_run_eval(self) -> None:
        if self.checkpoint is None:
            self.notify("pick a checkpoint first", severity="error")
            return
        tasks = list(self.query_one("#eval-tasks", TickList).selected)
        limit_text = self.query_one("#eval-limit", Input).value.strip() or "0"
        if not limit_text.isdigit():
            self.notify(f"examples per task must be a whole number, got {limit_text!r}", severity="error")
            return
        try:
            launched = launch_eval(self.checkpoint, tasks, int(limit_text))
        except BadInput as error:
            self.notify(str(error), severity="error", markup=False)
            return
        self.launched_here = True
        self.app.watch_launch(launched)
