"""Actions more than one screen offers (stop / pause / resume a worker, resume training from a
checkpoint), with their confirmations, so every screen asks the same question the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.screen import Screen

from workbench import runs
from workbench.errors import BadInput
from workbench.runs import LIVE_STATES
from workbench.tui.launch import Launched, launch_resume, resume_plan
from workbench.tui.widgets.dialogs import ConfirmDialog


def control_run(screen: Screen, run_dir: Path, command: str) -> None:
    """Pause and resume at once; stop only after a yes (it ends the worker, though it checkpoints
    first and training can continue with r)."""
    state = runs.effective_state(runs.read_status(run_dir))
    if state not in LIVE_STATES:
        screen.notify(f"{run_dir.name} is {state}: nothing to {command}", severity="warning")
        return

    def send(confirmed: bool | None = True) -> None:
        if not confirmed:
            return
        if command == "stop":
            runs.stop_run(run_dir)
        else:
            runs.send_control(run_dir, command)
        screen.notify(f"asked {run_dir.name} to {command} (at its next step)")

    if command == "stop":
        screen.app.push_screen(ConfirmDialog(f"Stop {run_dir.name}? It saves a checkpoint at its next step; "
                                             f"r on Checkpoints continues it later."), send)
    else:
        send()


def resume_training(screen: Screen, checkpoint: Path) -> None:
    """Continue a stopped or crashed run from its newest checkpoint, after saying exactly what
    will happen (which checkpoint, up to which step)."""
    try:
        stage, newest, step, total = resume_plan(checkpoint)
    except BadInput as error:
        screen.notify(str(error), severity="error")
        return
    note = "" if newest == checkpoint else " (training always continues from the newest checkpoint)"
    question = f"Resume {stage} of {newest.parent.parent.name} from {newest.name}{note}, step {step} -> {total}?"

    def start(confirmed: bool | None) -> None:
        if not confirmed:
            return
        launched = launch_and_watch(screen, launch_resume, newest)
        if launched:
            screen.app.open_run(launched.run_dir)

    screen.app.push_screen(ConfirmDialog(question), start)


def launch_and_watch(screen: Screen, launch: Callable[[Path], Launched], path: Path) -> Launched | None:
    """Start a detached worker and have the app watch it (it reports a failed start); a refusal
    (a run already running there, say) is an error toast, and None."""
    try:
        launched = launch(path)
    except BadInput as error:
        screen.notify(str(error), severity="error")
        return None
    screen.app.watch_launch(launched)
    return launched
