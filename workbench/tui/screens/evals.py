"""Eval runner: pick a checkpoint and tasks, run `picochat eval` as a detached worker, watch its
progress, and see the results next to earlier results of the same run (each checkpoint's evals.json).
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    ProgressBar,
    Select,
    SelectionList,
    Static,
)

from workbench import runs
from workbench.errors import BadInput
from workbench.tui.launch import EVAL_TASKS, launch_eval
from workbench.tui.screens.checkpoints import all_checkpoints, checkpoint_name


def score_text(result) -> str:
    """evals.json values are {"accuracy": x, ...} (or a bare number, or {"bpb": x})."""
    if isinstance(result, (int, float)):
        return f"{result:.4f}"
    if isinstance(result, dict):
        for key in ("accuracy", "bpb", "val_bpb", "score"):
            if isinstance(result.get(key), (int, float)):
                return f"{result[key]:.4f}"
    return "-"


class EvalsScreen(Screen):
    TITLE = "Evals"
    BINDINGS = [Binding("ctrl+r", "run_eval", "Run eval", priority=True)]

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="eval-top"):
            with Vertical(id="eval-choose"):
                yield Label("checkpoint")
                yield Select([], prompt="pick a checkpoint", id="eval-checkpoint")
                yield Label("tasks (space ticks)")
                yield SelectionList[str](*[(task, task, task == "bpb") for task in EVAL_TASKS], id="eval-tasks")
                yield Label("examples per task (0 = all)")
                yield Input("50", type="integer", id="eval-limit")
                yield Button("Run eval (ctrl+r)", variant="success", id="eval-run")
            with Vertical(id="eval-watch"):
                yield Static(id="eval-status")
                yield ProgressBar(id="eval-progress", show_eta=False)
                yield DataTable(id="eval-results", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.checkpoint: Path | None = None
        self.tail: runs.MetricsTail | None = None
        self.set_interval(1.0, self.poll)

    def on_screen_resume(self) -> None:
        self.sync_with_app()

    def sync_with_app(self) -> None:
        checkpoints = all_checkpoints(self.app.runs_dir)
        picker = self.query_one("#eval-checkpoint", Select)
        picker.set_options([(f"{p.parent.parent.name}/{checkpoint_name(p)}", str(p)) for p in checkpoints])
        wanted = self.app.eval_checkpoint or self.checkpoint
        if wanted is None and self.app.current_run is not None:
            own = [p for p in checkpoints if p.parent.parent == self.app.current_run]
            wanted = own[-1] if own else None
        if wanted is None and checkpoints:
            wanted = checkpoints[-1]
        if wanted is not None and wanted in checkpoints:
            picker.value = str(wanted)
            self.set_checkpoint(wanted)
        self.poll()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "eval-checkpoint" and event.value is not Select.NULL:
            self.set_checkpoint(Path(str(event.value)))

    def set_checkpoint(self, checkpoint: Path) -> None:
        if checkpoint == self.checkpoint:
            return
        self.checkpoint = checkpoint
        self.app.eval_checkpoint = checkpoint
        # Start from what the run's config asks for ([eval] tasks and limit).
        section = (runs.read_json_object(checkpoint / "config.json") or {}).get("eval")
        section = section if isinstance(section, dict) else {}
        tasks = section.get("tasks")
        wanted = [task for task in tasks if task in EVAL_TASKS] if isinstance(tasks, list) else []
        if wanted:
            tasks = self.query_one("#eval-tasks", SelectionList)
            tasks.deselect_all()
            for task in wanted:
                tasks.select(task)
        if isinstance(section.get("limit"), int):
            self.query_one("#eval-limit", Input).value = str(section["limit"])
        run_dir = checkpoint.parent.parent
        self.tail = runs.MetricsTail(run_dir.with_name(f"{run_dir.name}-eval") / "metrics.jsonl")
        self.last_progress = None
        self.show_results()
        self.poll()

    def poll(self) -> None:
        if not self.is_current or self.checkpoint is None or self.tail is None:
            if self.checkpoint is None:
                self.query_one("#eval-status", Static).update(
                    Text("no checkpoints yet: train a run first (Config screen, stage pretrain)", style="dim"))
            return
        arrived = False
        for record in self.tail.read():
            if record.get("stage") != "eval":
                continue
            arrived = True
            if record.get("kind") == "progress":
                self.last_progress = record
        progress = self.query_one(ProgressBar)
        status = self.query_one("#eval-status", Static)
        progress.display = bool(self.last_progress)  # no idle animation when nothing runs
        if self.last_progress:
            done, total = self.last_progress.get("done") or 0, self.last_progress.get("total")
            progress.update(total=total or None, progress=done)
            status.update(Text(f"eval of {self.checkpoint.parent.parent.name}: {done}/{total or '?'} "
                               f"{self.last_progress.get('unit', '')} {self.last_progress.get('task', '')}"))
        else:
            status.update(Text(f"{self.checkpoint.parent.parent.name}/{self.checkpoint.name}: pick tasks, ctrl+r runs"))
        if arrived:
            self.show_results()

    def show_results(self) -> None:
        """One row per checkpoint of the run that has evals.json, one column per task."""
        table = self.query_one("#eval-results", DataTable)
        table.clear(columns=True)
        if self.checkpoint is None:
            return
        results = {path: runs.read_json_object(path / "evals.json")
                   for path in runs.list_checkpoints(self.checkpoint.parent.parent)}
        results = {path: data for path, data in results.items() if data}
        tasks = sorted({task for data in results.values() for task in data})
        table.add_columns("checkpoint", *[escape(task) for task in tasks])  # str labels are markup
        for path, data in results.items():
            name = Text(path.name, style="bold" if path == self.checkpoint else "")
            table.add_row(name, *[score_text(data.get(task)) for task in tasks])
        if not results:
            table.add_column("no results yet")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "eval-run":
            self.action_run_eval()

    def action_run_eval(self) -> None:
        if self.checkpoint is None:
            self.notify("pick a checkpoint first", severity="error")
            return
        tasks = list(self.query_one("#eval-tasks", SelectionList).selected)
        limit_text = self.query_one("#eval-limit", Input).value.strip() or "0"
        if not limit_text.isdigit():
            self.notify(f"examples per task must be a whole number, got {limit_text!r}", severity="error")
            return
        try:
            launched = launch_eval(self.checkpoint, tasks, int(limit_text))
        except BadInput as error:
            self.notify(str(error), severity="error")
            return
        self.last_progress = None
        self.app.watch_launch(launched)
