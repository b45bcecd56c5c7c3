"""Snapshots of the main screens over the recorded run folders (fixed data, fixed terminal size;
the runs are done, failed or crashed, so nothing depends on the clock).

Update after an intended change:  .venv/bin/python -m pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

from pathlib import Path

from workbench.tui.app import PicochatApp

FIXTURE_RUNS = Path(__file__).parent / "fixtures" / "runs"
SIZE = (130, 40)


def test_runs_screen(snap_compare):
    assert snap_compare(PicochatApp(FIXTURE_RUNS), terminal_size=SIZE)


def test_dashboard_screen(snap_compare):
    assert snap_compare(PicochatApp(FIXTURE_RUNS), press=["enter"], terminal_size=SIZE)


def test_checkpoints_screen_with_config_diff(snap_compare):
    assert snap_compare(PicochatApp(FIXTURE_RUNS), press=["5", "space", "down", "down", "down", "space"],
                        terminal_size=SIZE)


def test_config_screen_with_errors(snap_compare):
    async def break_the_config(pilot):
        pilot.app.open_config(FIXTURE_RUNS / "tiny-done" / "config.toml")
        await pilot.pause()
        editor = pilot.app.screen.query_one("#config-editor")
        editor.load_text(editor.text.replace("steps = 300", "steps = 0"))
        pilot.app.screen.query_one("#config-save").focus()  # no blinking cursor in the picture
        await pilot.pause(0.3)

    assert snap_compare(PicochatApp(FIXTURE_RUNS), run_before=break_the_config, terminal_size=SIZE)


def test_evals_screen(snap_compare):
    async def open_eval(pilot):
        pilot.app.open_eval(FIXTURE_RUNS / "tiny-done" / "checkpoints" / "step_000300")
        await pilot.pause()

    assert snap_compare(PicochatApp(FIXTURE_RUNS), run_before=open_eval, terminal_size=SIZE)
