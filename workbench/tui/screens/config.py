"""Config: pick or create a per-run TOML, edit it with TOML highlighting, validate as you type
(errors with line numbers), save it, and launch any stage as a detached worker (ctrl+l, then a key
per stage, or enter for the stage the run needs next).

An invalid config can be saved (work in progress) but never launched. A new config (n on Runs) is a
copy of the embedded default in ./configs with a run name of its own; the embedded default itself is
never overwritten. A config saved into another folder gets its relative paths made absolute, so it
still finds its data (assets/..., the run folder) from there.

The editor takes keys only once focused (e, tab or a click; escape leaves it), so the number keys
still switch screens; unsaved changes are asked about before quitting.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Select, Static, TextArea

from workbench import config as config_module
from workbench import runs
from workbench.errors import BadInput
from workbench.tui.launch import (
    config_base_dir,
    config_files,
    display_path,
    launch_stage,
    rebase_paths,
    running_stage,
    suggested_stage,
)
from workbench.tui.widgets.common import NavBar
from workbench.tui.widgets.dialogs import StageDialog

STAGE_ABOUT = {
    "prepare": "sources -> parquet shards",
    "tokenizer": "train the BPE tokenizer",
    "pretrain": "pretrain the model",
    "sft": "fine-tune it on chat data",
    "grpo": "reinforcement learning after SFT",
    "eval": "evaluate the newest checkpoint (the config's eval tasks)",
}


class ConfigScreen(Screen):
    TITLE = "Config"
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("ctrl+l", "launch", "Launch stage", priority=True),
        Binding("ctrl+o", "focus_picker", "Open…", priority=True),
        Binding("e", "edit", "Edit"),
    ]

    def compose(self) -> ComposeResult:
        yield NavBar("config")
        with Horizontal(id="config-top"):
            yield Select([], prompt="open a config…", id="config-picker")
            yield Input(placeholder="save as (path)", id="config-path")
        yield TextArea.code_editor("", language="toml", id="config-editor")
        yield Static(id="config-errors")
        with Horizontal(id="config-actions"):
            yield Button("Launch… (ctrl+l)", variant="success", id="config-launch")
            yield Button("Save (ctrl+s)", id="config-save")
            yield Static(id="config-next")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.errors: list[str] = []
        self.saved_text: str | None = None  # the text as last loaded or saved
        self.loaded_base: Path | None = None  # where the text's relative paths were written to resolve from
        self.fill_picker()

    def on_screen_resume(self) -> None:
        self.sync_with_app()

    def sync_with_app(self) -> None:
        """Load what the app asked for (n on Runs -> configs/tiny.toml), else keep the open file;
        if nothing is open yet, start from the current run's config or the default."""
        self.fill_picker()
        pending, self.app.pending_config = self.app.pending_config, None
        if pending is not None:
            self.load_file(pending)
        elif not self.query_one("#config-path", Input).value:
            current = self.app.current_run
            if current is not None and (current / "config.toml").is_file():
                self.load_file(current / "config.toml")
            else:
                self.load_file(config_module.default_config_path())
        # Not the editor: typing goes into it only once asked for (e), so 1-7 keep switching screens.
        self.query_one("#config-launch", Button).focus()

    def fill_picker(self) -> None:
        options = [(display_path(path), str(path)) for path in config_files(self.app.runs_dir)]
        self.query_one("#config-picker", Select).set_options(options)

    def load_file(self, path: Path) -> None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            self.notify(f"{path}: cannot read: {error}", severity="error")
            return
        self.loaded_base = config_base_dir(path)
        self.query_one("#config-path", Input).value = display_path(path)
        self.saved_text = text
        self.query_one(TextArea).load_text(text)
        self.validate()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "config-picker" and event.value is not Select.NULL:
            self.load_file(Path(str(event.value)))

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self.validate()
        unsaved = self.saved_text is not None and event.text_area.text != self.saved_text
        self.app.unsaved_config = (self.query_one("#config-path", Input).value or "the config") if unsaved else None

    def validate(self) -> list[str]:
        text = self.query_one(TextArea).text
        path = self.query_one("#config-path", Input).value or "<config>"
        _, self.errors = config_module.parse(text, path)
        box = self.query_one("#config-errors", Static)
        # Text, not markup: error messages contain "[train]", which markup would swallow.
        report = Text()
        for error in self.errors:
            report.append("✗ ", style="bold red").append(error + "\n")
        box.update(report if self.errors else Text.assemble(("✓ ", "bold green"), "valid"))
        box.set_class(bool(self.errors), "invalid")
        self.query_one("#config-launch", Button).disabled = bool(self.errors)
        self.query_one("#config-next", Static).update(self.next_stage_hint())
        return self.errors

    def next_stage_hint(self) -> Text:
        if self.errors:
            return Text("")
        try:
            cfg = self.current_config()
        except BadInput:
            return Text("")
        running = running_stage(cfg)
        if running is not None:
            return Text.assemble((running, "bold"), (" is running (4: Dashboard)", "dim"))
        return Text.assemble(("next stage: ", "dim"), (suggested_stage(cfg), "bold"), ("  (ctrl+l, enter)", "dim"))

    def current_config(self) -> config_module.Config:
        """The editor's text as a Config whose relative paths resolve from where it will be saved."""
        text = self.query_one(TextArea).text
        cfg, errors = config_module.parse(text, "<config>")
        if errors:
            raise BadInput(errors[0])
        value = self.query_one("#config-path", Input).value.strip()
        cfg.base_dir = config_base_dir(Path(value)) if value else (self.loaded_base or Path.cwd())
        return cfg

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "config-launch":
            self.action_launch()
        elif event.button.id == "config-save":
            self.action_save()

    def action_focus_picker(self) -> None:
        self.query_one("#config-picker", Select).focus()

    def action_edit(self) -> None:
        self.query_one(TextArea).focus()

    def action_save(self) -> Path | None:
        value = self.query_one("#config-path", Input).value.strip()
        if not value:
            self.notify("give the config a path first", severity="error")
            return None
        path = Path(value).expanduser()
        if path.resolve() == config_module.default_config_path().resolve():
            self.notify(f"{value} is the embedded default: save under another name (n on Runs writes a "
                        f"copy of your own)", severity="error", markup=False, timeout=10)
            return None
        editor = self.query_one(TextArea)
        text, rewritten = editor.text, []
        if self.loaded_base is not None and config_base_dir(path) != self.loaded_base:
            text, rewritten = rebase_paths(text, self.loaded_base, config_base_dir(path))
        try:
            runs.atomic_write_text(path, text)
        except OSError as error:
            self.notify(f"{path}: cannot save: {error}", severity="error")
            return None
        if rewritten:
            editor.load_text(text)
            self.notify(f"made {', '.join(rewritten)} absolute: {path.parent} is another folder than the "
                        f"config came from")
        self.loaded_base = config_base_dir(path)
        self.saved_text = text
        self.app.unsaved_config = None
        self.app.current_config = path
        self.notify(f"saved {display_path(path)}", markup=False)
        return path

    def action_launch(self) -> None:
        """Pick a stage first; the config is saved only once one is picked (escape saves nothing)."""
        if self.validate():
            self.notify("fix the config errors first: an invalid config cannot be launched", severity="error")
            return
        try:
            cfg = self.current_config()
            suggested, running = suggested_stage(cfg), running_stage(cfg)
        except BadInput as error:
            self.notify(str(error), severity="error", markup=False, timeout=15)
            return
        title = f"Launch a stage of {self.query_one('#config-path', Input).value}"
        self.app.push_screen(StageDialog(title, STAGE_ABOUT, suggested, running=running), self.launch)

    def launch(self, stage: str | None) -> None:
        if stage is None:
            return
        path = self.action_save()
        if path is None:
            return
        try:
            launched = launch_stage(stage, path)
        except BadInput as error:
            # Long enough to read, and plain text: the message names "[run] name".
            self.notify(str(error), severity="error", markup=False, timeout=20)
            return
        self.app.watch_launch(launched)
        next_screen = {"prepare": "data", "tokenizer": "data", "eval": "evals"}.get(stage, "dashboard")
        self.app.open_run(launched.run_dir, next_screen)
