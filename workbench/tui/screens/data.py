"""Dataset prep and tokenizer training: choose sources, run `picochat prepare` / `picochat
tokenizer` as detached workers, watch their progress, and see what came out (documents, bytes,
shards; vocabulary, chars/token and a sample of text with its token boundaries colored). The run
folder's status comes from the app's model (the app follows it)."""

from __future__ import annotations

import codecs
import dataclasses
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, ProgressBar, Select, Static

from workbench import config as config_module
from workbench import runs
from workbench.errors import BadInput
from workbench.tui.launch import config_files, display_path, launch_stage
from workbench.tui.model import ModelChanged
from workbench.tui.screens.runs import format_count
from workbench.tui.widgets.common import NavBar, TickList

TOKEN_COLORS = ("on #3b4252", "on #4c566a", "on #5e3a5a", "on #2e5a4a", "on #5a4a2e", "on #2e4a6a")
SAMPLE_CHARS = 400


def colored_tokens(tokenizer: Any, text: str) -> Text:
    """The text with each token on its own background color. Tokens can end inside a UTF-8
    character, so bytes go through an incremental decoder: a split character is shown with the
    token that completes it."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    out = Text()
    for index, token_id in enumerate(tokenizer.encode(text)):
        piece = decoder.decode(tokenizer.token_to_bytes(token_id))
        if piece:
            out.append(piece, style=TOKEN_COLORS[index % len(TOKEN_COLORS)])
    return out


def manifest_summary(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """documents / bytes / shards, overall and per split, from whatever manifest.json holds."""
    rows = []
    for key in ("documents", "bytes", "chars", "shards", "skipped"):
        if isinstance(manifest.get(key), (int, float)):
            rows.append((key, format_count(manifest[key])))
        elif isinstance(manifest.get(key), (list, dict)):
            rows.append((key, str(len(manifest[key]))))
    for split, numbers in (manifest.get("splits") or {}).items():
        if isinstance(numbers, dict):
            parts = [f"{name} {format_count(value) if isinstance(value, (int, float)) else len(value)}"
                     for name, value in numbers.items() if isinstance(value, (int, float, list))]
            rows.append((split, ", ".join(parts)))
    return rows


class DataScreen(Screen):
    TITLE = "Data"
    BINDINGS = [
        Binding("ctrl+r", "launch('prepare')", "Prepare data", priority=True),
        Binding("ctrl+t", "launch('tokenizer')", "Train tokenizer", priority=True),
    ]

    def compose(self) -> ComposeResult:
        yield NavBar("data")
        with Horizontal(id="data-top"):
            with Vertical(id="data-choose"):
                yield Label("config")
                yield Select([], prompt="pick a config", id="data-config")
                yield Label("sources (space ticks)")
                yield TickList[str](id="data-sources")
                yield Input(placeholder="add a source: file or folder, enter adds", id="data-add")
                with Horizontal(classes="buttons"):
                    yield Button("Prepare (ctrl+r)", variant="success", id="data-prepare")
                    yield Button("Tokenizer (ctrl+t)", variant="primary", id="data-tokenizer")
            with Vertical(id="data-watch"):
                yield Static(id="data-status")
                yield ProgressBar(id="data-progress", show_eta=False)
                yield Static(id="data-result", classes="panel")
                yield Static(id="data-sample", classes="panel")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.config_path: Path | None = None
        self.cfg: config_module.Config | None = None
        self.shown_result: tuple = ()
        self.query_one("#data-result").border_title = "result"
        self.query_one("#data-sample").border_title = "tokenized sample"

    @on(ModelChanged)
    def model_changed(self, event: ModelChanged) -> None:
        if self.cfg is not None and event.topic == "folder" and event.path == self.cfg.out_dir:
            self.poll()

    def on_screen_resume(self) -> None:
        self.sync_with_app()

    def sync_with_app(self) -> None:
        options = [(display_path(path), str(path)) for path in config_files(self.app.runs_dir)]
        picker = self.query_one("#data-config", Select)
        picker.set_options(options)
        wanted = self.config_path
        run = self.app.current_run
        if run is not None and (run / "config.toml").is_file():
            wanted = (run / "config.toml").resolve()
        elif self.app.current_config is not None:
            wanted = self.app.current_config.resolve()
        if wanted is None:
            wanted = config_module.default_config_path().resolve()
        if str(wanted) in [value for _, value in options]:
            picker.value = str(wanted)
        self.load_config(Path(wanted))

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "data-config" and event.value is not Select.NULL:
            self.load_config(Path(str(event.value)))

    def load_config(self, path: Path) -> None:
        if path == self.config_path and self.cfg is not None:
            self.poll()
            return
        try:
            self.cfg = config_module.load(path)
        except BadInput as error:
            self.cfg = None
            self.query_one("#data-status", Static).update(Text(str(error), style="bold red"))
            return
        self.config_path = path
        self.app.follow("data", [self.cfg.out_dir])
        sources = self.query_one("#data-sources", TickList)
        sources.clear_options()
        sources.add_options([(source, source, True) for source in self.cfg.data.sources])
        self.shown_result = ()
        self.poll()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "data-add" or not event.value.strip():
            return
        source = event.value.strip()
        if not Path(source).expanduser().exists():
            self.notify(f"{source}: no such file or folder", severity="error")
            return
        self.query_one("#data-sources", TickList).add_option((source, source, True))
        event.input.value = ""

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id in ("data-prepare", "data-tokenizer"):
            self.action_launch(event.button.id.removeprefix("data-"))

    def action_launch(self, stage: str) -> None:
        if self.cfg is None or self.config_path is None:
            self.notify("pick a valid config first", severity="error")
            return
        config_path = self.config_path
        chosen = list(self.query_one("#data-sources", TickList).selected)
        if stage == "prepare" and chosen != self.cfg.data.sources:
            if not chosen:
                self.notify("tick at least one source", severity="error")
                return
            # Other sources than the file's: launch a copy of the config (absolute paths) that has them.
            frozen = self.cfg.frozen()
            frozen.data = dataclasses.replace(frozen.data, sources=[str(self.cfg.resolve_path(s)) for s in chosen])
            config_path = self.cfg.out_dir / "prepare.toml"
            runs.atomic_write_text(config_path, frozen.to_toml())
        try:
            launched = launch_stage(stage, config_path)
        except BadInput as error:
            self.notify(str(error), severity="error", markup=False, timeout=15)
            return
        self.app.current_run = launched.run_dir
        self.app.watch_launch(launched)
        self.poll()

    def poll(self) -> None:
        if self.cfg is None:
            return
        folder = self.app.model.folders.get(self.cfg.out_dir)
        status = folder.status if folder else None
        label = self.query_one("#data-status", Static)
        bar = self.query_one(ProgressBar)
        if status is None:
            label.update(Text(f"{self.cfg.out_dir.name}: nothing run yet", style="dim"))
            bar.display = False
        else:
            state = folder.state
            done, total = status.get("progress"), status.get("progress_total")
            unit = status.get("progress_unit") or ""
            text = f"{self.cfg.out_dir.name}: {status.get('stage', '?')} {state}"
            if isinstance(done, (int, float)):
                text += f"  {format_count(done)}/{format_count(total)} {unit}"
            if status.get("message"):
                text += f"  {status['message']}"
            label.update(Text(text))  # the status's words are text, not Rich markup
            bar.display = isinstance(done, (int, float))
            if bar.display:
                bar.update(total=total or None, progress=done)
        self.show_result()

    def show_result(self) -> None:
        cfg = self.cfg
        manifest_path = cfg.data_dir / "manifest.json"
        tokenizer_path = cfg.tokenizer_path
        metrics = self.app.metrics.get(cfg.out_dir)
        trained = metrics.last_tokenizer if metrics else None
        stamp = tuple(p.stat().st_mtime if p.exists() else None for p in (manifest_path, tokenizer_path))
        stamp += (id(trained),)
        if stamp == self.shown_result:
            return  # nothing new on disk
        self.shown_result = stamp
        self.load_result(cfg, manifest_path, tokenizer_path, trained)

    @work(thread=True, exclusive=True)
    def load_result(self, cfg: config_module.Config, manifest_path: Path, tokenizer_path: Path,
                    trained: dict[str, Any] | None) -> None:
        """Reading parquet and the tokenizer takes a moment: off the UI thread. chars/token is the
        one the tokenizer worker measured (its "tokenizer" record, the figure of its status line),
        measured here on the sample only for a tokenizer trained elsewhere."""
        result = Text()
        try:
            from workbench.data import shards

            manifest = shards.read_manifest(cfg.data_dir)
        except (BadInput, ImportError) as error:
            manifest = {}
            result.append(f"{error}\n", style="red")
        if manifest:
            result.append(f"data  {display_path(cfg.data_dir)}\n", style="bold")
            for name, value in manifest_summary(manifest):
                result.append(f"  {name:<10} {value}\n")
        else:
            result.append("no prepared data yet (ctrl+r)\n", style="dim")
        sample = Text("train a tokenizer to see how it splits text (ctrl+t)", style="dim")
        if tokenizer_path.exists():
            try:
                from workbench.tokenizer import Tokenizer, measure

                tokenizer = Tokenizer.from_file(tokenizer_path)
                text = self.sample_text(cfg)
                result.append(f"tokenizer  {display_path(tokenizer_path)}\n", style="bold")
                result.append(f"  vocab      {tokenizer.vocab_size}\n")
                if trained and runs.is_number(trained.get("chars_per_token")):
                    where = trained.get("measured_on")
                    result.append(f"  chars/token {trained['chars_per_token']:.2f}"
                                  + (f" (on the {where} split)\n" if isinstance(where, str) else "\n"))
                else:
                    stats = measure(tokenizer, [text])
                    result.append(f"  chars/token {stats['chars_per_token']:.2f} (on the sample below)\n")
                sample = colored_tokens(tokenizer, text)
            except (BadInput, ImportError, OSError) as error:
                result.append(f"tokenizer: {error}\n", style="red")
        self.app.call_from_thread(self.query_one("#data-result", Static).update, result)
        self.app.call_from_thread(self.query_one("#data-sample", Static).update, sample)

    @staticmethod
    def sample_text(cfg: config_module.Config) -> str:
        """The start of the first validation document (or of the first source file)."""
        try:
            from workbench.data import shards

            for split in ("val", "train"):
                for text, _ in shards.iter_documents(cfg.data_dir, split):
                    return text[:SAMPLE_CHARS]
        except (BadInput, ImportError):
            pass
        for source in cfg.data.sources:
            path = cfg.resolve_path(source)
            if path.is_file():
                with open(path, encoding="utf-8", errors="replace") as handle:
                    return handle.read(SAMPLE_CHARS)
        return "The quick brown fox jumps over the lazy dog. 12 + 34 = 46."
