"""`picochat-tui [RUNS_DIR]`: the full-screen workbench.

One Textual app, one mode per screen (runs, config, data, dashboard, checkpoints, evals, chat), each
reachable by a number key, an F-key and the command palette (ctrl+p); `?` lists every key of the
screen on view, `q` quits (asking first when a config has unsaved changes). The app never imports
torch: everything it shows comes from run folders, read by one watcher thread (workbench.tui.model)
whose messages the app folds into one model and passes on to the screen on view; everything it
starts is a detached worker process, so it opens instantly and can be closed at any time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from workbench.stages import TRAINING_STAGES
from workbench.tui.launch import Launched, display_path
from workbench.tui.model import (
    CheckpointsListed,
    FolderRead,
    Model,
    ModelChanged,
    RunsListed,
    Watcher,
    WorkerEnded,
)
from workbench.tui.screens.chat import ChatScreen
from workbench.tui.screens.checkpoints import CheckpointsScreen
from workbench.tui.screens.config import ConfigScreen
from workbench.tui.screens.dashboard import DashboardScreen
from workbench.tui.screens.data import DataScreen
from workbench.tui.screens.evals import EvalsScreen
from workbench.tui.screens.inspect import InspectScreen
from workbench.tui.screens.runs import RunsScreen
from workbench.tui.series import RunMetrics
from workbench.tui.widgets.common import NAVIGATION, HelpScreen, help_rows
from workbench.tui.widgets.dialogs import ConfirmDialog

SCREENS = {
    "runs": RunsScreen,
    "config": ConfigScreen,
    "data": DataScreen,
    "dashboard": DashboardScreen,
    "checkpoints": CheckpointsScreen,
    "evals": EvalsScreen,
    "chat": ChatScreen,
    "inspect": InspectScreen,
}


class PicochatApp(App):
    TITLE = "picochat"
    CSS_PATH = "app.tcss"
    MODES = SCREENS
    DEFAULT_MODE = "runs"
    # F-keys work everywhere (priority: even inside the config editor or the chat input); the bare
    # digits do the same wherever the focused widget does not take typing. The navigation bar on
    # top shows them, so the footer keeps its room for the screen's own keys.
    BINDINGS = [
        Binding(f"f{key}", f"show('{mode}')", title, key_display=f"F{key}", priority=True, show=False)
        for mode, (key, title, _) in NAVIGATION.items()
    ] + [Binding(key, f"show('{mode}')", title, show=False) for mode, (key, title, _) in NAVIGATION.items()] + [
        Binding("question_mark", "help", "Keys", key_display="?"),
        Binding("q", "quit", "Quit", show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True, show=False),
        Binding("escape", "close_panel", "Close panel", show=False),
    ]

    def __init__(self, runs_dir: str | Path = "runs"):
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.model = Model()
        self.metrics: dict[Path, RunMetrics] = {}  # every followed folder's records, as series
        self.followed: dict[str, set[Path]] = {}  # who follows which folders (a screen, a worker)
        self.watcher = Watcher(self, self.runs_dir)
        # What the screens share: the run being looked at, and what a screen was asked to open.
        self.current_run: Path | None = None
        self.pending_overlay: list[Path] | None = None  # runs the dashboard overlays next (a sweep's)
        self.pending_config: Path | None = None
        self.current_config: Path | None = None  # the config last saved or launched
        self.unsaved_config: str | None = None  # the config editor's path while it has unsaved changes
        self.chat_checkpoint: Path | None = None
        self.eval_checkpoint: Path | None = None
        self.launched: list[Launched] = []  # workers started here, until they end

    def on_mount(self) -> None:
        self.watcher.read_now(everything=True)
        self.run_worker(self.watcher.run, thread=True, exclusive=True, group="watcher",
                        name="run-folder watcher", exit_on_error=False)

    def on_unmount(self) -> None:
        self.watcher.stop()

    # ---- the model: the watcher's messages in, ModelChanged out to the screen on view ----

    def follow(self, owner: str, paths: Iterable[Path]) -> None:
        """`owner` (a screen) follows these folders from now on; a folder nobody follows is
        dropped. A newly followed folder is read at once, so it shows in the next frame."""
        self.followed[owner] = {Path(path) for path in paths}
        wanted = set().union(*self.followed.values())
        new = wanted - set(self.watcher.wanted)
        for path in set(self.metrics) - wanted:
            del self.metrics[path]
            self.model.folders.pop(path, None)
        self.watcher.follow(wanted)
        if new:
            self.watcher.read_now()

    def tell_screen(self, topic: str, path: Path | None = None) -> None:
        self.screen.post_message(ModelChanged(topic, path))

    @on(RunsListed)
    def runs_listed(self, message: RunsListed) -> None:
        self.model.runs, self.model.sweeps, self.model.listed = message.infos, message.sweeps, True
        self.tell_screen("runs")

    @on(CheckpointsListed)
    def checkpoints_listed(self, message: CheckpointsListed) -> None:
        self.model.checkpoints = message.checkpoints
        self.tell_screen("checkpoints")

    @on(FolderRead)
    def folder_read(self, message: FolderRead) -> None:
        path = message.folder.path
        if path not in self.watcher.wanted:
            return  # followed no more
        if message.reset or message.first or path not in self.metrics:
            self.metrics[path] = RunMetrics(path)
        self.metrics[path].extend(message.records)
        self.model.folders[path] = message.folder
        self.tell_screen("folder", path)

    def default_run(self) -> Path | None:
        """The run to show when none was picked: the newest training run (not an eval's folder)."""
        infos = self.model.runs
        training = [info for info in infos if info.stage in TRAINING_STAGES]
        return (training or infos)[0].path if infos else None

    # ---- workers started from this TUI ----

    def watch_launch(self, launched: Launched) -> None:
        """Say what started, and later how it ended: a worker that fails (a bad data file, an eval
        folder that is not there) says why in its log, and the error line is shown here."""
        self.launched.append(launched)
        self.watcher.launched.append(launched)
        self.follow(f"launched:{launched.pid}", [launched.run_dir])
        self.notify(f"started {launched.what} (pid {launched.pid}); log: {display_path(launched.log_path)}")
        if launched.run_dir.resolve().parent != self.runs_dir.resolve():
            self.notify(f"{display_path(launched.run_dir)} is outside {self.runs_dir}, the runs folder this "
                        f"window lists: open picochat-tui {display_path(launched.run_dir.parent)} to see it there",
                        severity="warning", timeout=10)

    @on(WorkerEnded)
    def worker_ended(self, message: WorkerEnded) -> None:
        launched = message.launched
        self.launched.remove(launched)
        self.follow(f"launched:{launched.pid}", [])
        where = launched.run_dir.name
        if message.code == 0:
            self.notify(f"{launched.what} of {where} finished")
        else:
            self.notify(f"{launched.what} of {where} failed: {message.line or f'exit code {message.code}'}",
                        severity="error", timeout=15, markup=False)

    # ---- navigation between screens ----

    def action_show(self, mode: str) -> None:
        if self.current_mode != mode:
            self.switch_mode(mode)

    def open_run(self, run_dir: Path, mode: str = "dashboard", overlay: list[Path] | None = None) -> None:
        self.current_run = Path(run_dir)
        self.pending_overlay = [Path(path) for path in overlay] if overlay is not None else None
        self._go(mode)

    def open_config(self, config_path: Path) -> None:
        self.pending_config = Path(config_path)
        self._go("config")

    def open_chat(self, checkpoint: Path) -> None:
        self.chat_checkpoint = Path(checkpoint)
        self._go("chat")

    def open_eval(self, checkpoint: Path) -> None:
        self.eval_checkpoint = Path(checkpoint)
        self.current_run = Path(checkpoint).parent.parent
        self._go("evals")

    def _go(self, mode: str) -> None:
        """Switch to a mode; a screen that is already showing gets no ScreenResume, so tell it."""
        if self.current_mode == mode:
            sync = getattr(self.screen, "sync_with_app", None)
            if sync:
                sync()
        else:
            self.switch_mode(mode)

    # ---- keys every screen has ----

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss(None)
            return
        title = NAVIGATION.get(self.current_mode, ("", self.current_mode, ""))[1]
        self.push_screen(HelpScreen(title, help_rows(self.screen)))

    def action_close_panel(self) -> None:
        """Escape closes Textual's keys panel (ctrl+p, "Show keys") like any other panel."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()

    async def action_quit(self) -> None:
        """Quit; workers go on. A config with unsaved changes is asked about first."""
        if self.unsaved_config is None:
            self.exit()
            return

        def answer(confirmed: bool | None) -> None:
            if confirmed:
                self.exit()

        self.push_screen(ConfirmDialog(f"{self.unsaved_config} has unsaved changes (ctrl+s on Config saves "
                                       f"them). Quit anyway?"), answer)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for mode, (key, title, _) in NAVIGATION.items():
            yield SystemCommand(f"Go to {title}", f"Switch to the {title} screen (key {key})",
                                lambda mode=mode: self.action_show(mode))


def main(argv: list[str] | None = None) -> int:
    # `picochat tui` passes its own parsed args; `picochat-tui` calls main() with sys.argv.
    parser = argparse.ArgumentParser(prog="picochat-tui", description="the full-screen picochat workbench")
    parser.add_argument("runs_dir", nargs="?", default="runs", help="folder of run folders (default ./runs)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    PicochatApp(args.runs_dir).run()
    return 0


# `picochat tui [RUNS_DIR]` goes through the CLI dispatcher: the same app.
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs_dir", nargs="?", default="runs", help="folder of run folders (default ./runs)")


def run(args: argparse.Namespace) -> int:
    PicochatApp(args.runs_dir).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
