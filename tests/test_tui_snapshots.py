"""Snapshots of every screen over the recorded run folders, at the smallest supported terminal
(80x24) and a large one (200x50). Fixed data and no clock: the runs are done, failed or crashed.

Update after an intended change:  .venv/bin/python -m pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from workbench.tui.app import PicochatApp

FIXTURE_RUNS = Path(__file__).parent / "fixtures" / "runs"
SIZES = {"80x24": (80, 24), "200x50": (200, 50)}
NEWEST = FIXTURE_RUNS / "tiny-done" / "checkpoints" / "step_000300"
# A model process that is ready at once and never answers: the Chat screen without torch.
READY_WORKER = 'import json; print(json.dumps({"type": "ready", "model": "fixture", "params": 2469134}), flush=True); input()'


async def settle(pilot, condition=lambda: True, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        await pilot.pause(0.1)
    pilot.app.screen.set_focus(None)  # no blinking cursor in the picture
    await pilot.pause(0.3)


def open_screen(mode: str):
    async def run_before(pilot) -> None:
        app = pilot.app
        if mode == "dashboard":
            app.open_run(FIXTURE_RUNS / "tiny-done")
        elif mode == "config":
            app.open_config(FIXTURE_RUNS / "tiny-done" / "config.toml")
            await pilot.pause()
            editor = app.screen.query_one("#config-editor")
            editor.load_text(editor.text.replace("steps = 300", "steps = 0"))  # an error to show
        elif mode == "checkpoints":
            await pilot.press("5", "space", "down", "down", "down", "space")  # two marked: their config diff
        elif mode == "evals":
            app.open_eval(NEWEST)
        elif mode == "chat":
            app.chat_worker_command = lambda checkpoint: [sys.executable, "-c", READY_WORKER]
            app.open_chat(NEWEST)
        elif mode != "runs":
            app.action_show(mode)
        await pilot.pause()
        screen = app.screen
        if mode == "chat":
            await settle(pilot, lambda: "ready" in str(screen.query_one("#chat-status").render()))
        elif mode == "data":
            await settle(pilot, lambda: "tokenizer" in str(screen.query_one("#data-sample").render()))
        else:
            await settle(pilot)

    return run_before


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", ["runs", "config", "data", "dashboard", "checkpoints", "evals", "chat"])
def test_screen(snap_compare, mode, size):
    app = PicochatApp(FIXTURE_RUNS)
    assert snap_compare(app, run_before=open_screen(mode), terminal_size=SIZES[size])


def test_keys_overlay(snap_compare):
    assert snap_compare(PicochatApp(FIXTURE_RUNS), press=["4", "question_mark"], terminal_size=SIZES["80x24"])
