"""`picochat-tui [RUNS_DIR]`: the full-screen workbench.

One Textual app, one mode per screen (runs, config, data, dashboard, checkpoints, evals, chat), each
reachable by a number key, an F-key and the command palette (ctrl+p). The app never imports torch:
everything it shows comes from run folders (workbench.runs), and everything it starts is a
detached worker process, so it opens instantly and can be closed at any time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from workbench.tui.launch import Launched, display_path, exit_code, failure_line
from workbench.tui.screens.chat import ChatScreen
from workbench.tui.screens.checkpoints import CheckpointsScreen
from workbench.tui.screens.config import ConfigScreen
from workbench.tui.screens.dashboard import DashboardScreen
from workbench.tui.screens.data import DataScreen
from workbench.tui.screens.evals import EvalsScreen
from workbench.tui.screens.runs import RunsScreen

# mode -> (screen class, key, title shown in the footer and the palette)
SCREENS = {
    "runs": (RunsScreen, "1", "Runs"),
    "config": (ConfigScreen, "2", "Config"),
    "data": (DataScreen, "3", "Data"),
    "dashboard": (DashboardScreen, "4", "Dashboard"),
    "checkpoints": (CheckpointsScreen, "5", "Checkpoints"),
    "evals": (EvalsScreen, "6", "Evals"),
    "chat": (ChatScreen, "7", "Chat"),
}


class PicochatApp(App):
    TITLE = "picochat"
    CSS_PATH = "app.tcss"
    MODES = {mode: screen for mode, (screen, _, _) in SCREENS.items()}
    DEFAULT_MODE = "runs"
    # F-keys work everywhere (priority: even inside the config editor or the chat input); the bare
    # digits do the same wherever the focused widget does not take typing.
    BINDINGS = [
        Binding(f"f{key}", f"show('{mode}')", title, key_display=f"F{key}", priority=True)
        for mode, (_, key, title) in SCREENS.items()
    ] + [Binding(key, f"show('{mode}')", title, show=False) for mode, (_, key, title) in SCREENS.items()]

    def __init__(self, runs_dir: str | Path = "runs"):
        super().__init__()
        self.runs_dir = Path(runs_dir)
        # What the screens share: the run being looked at, and what a screen was asked to open.
        self.current_run: Path | None = None
        self.pending_overlay: list[Path] | None = None  # runs the dashboard overlays next (a sweep's)
        self.pending_config: Path | None = None
        self.current_config: Path | None = None  # the config last saved or launched
        self.chat_checkpoint: Path | None = None
        self.eval_checkpoint: Path | None = None
        self.launched: list[Launched] = []  # workers started here, until they end

    def on_mount(self) -> None:
        self.set_interval(1.0, self.check_launched)

    # ---- workers started from this TUI ----

    def watch_launch(self, launched: Launched) -> None:
        """Say what started, and later how it ended: a worker that fails (a bad data file, an eval
        folder that is not there) says why in its log, and the error line is shown here."""
        self.launched.append(launched)
        self.notify(f"started {launched.what} (pid {launched.pid}); log: {display_path(launched.log_path)}")
        if launched.run_dir.resolve().parent != self.runs_dir.resolve():
            self.notify(f"{display_path(launched.run_dir)} is outside {self.runs_dir}, the runs folder this "
                        f"window lists: open picochat-tui {display_path(launched.run_dir.parent)} to see it there",
                        severity="warning", timeout=10)

    def check_launched(self) -> None:
        for launched in list(self.launched):
            code = exit_code(launched.pid)
            if code is None:
                continue
            self.launched.remove(launched)
            where = launched.run_dir.name
            if code == 0:
                self.notify(f"{launched.what} of {where} finished")
            else:
                line = failure_line(launched) or f"exit code {code}"
                self.notify(f"{launched.what} of {where} failed: {line}", severity="error", timeout=15)

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

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for mode, (_, key, title) in SCREENS.items():
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
