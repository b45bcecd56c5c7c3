"""End to end through the TUI: a real tiny pretraining run launched from the Config screen as a
detached worker, watched on the dashboard until it finishes; and a real chat with a trained
checkpoint through the model worker process."""

from __future__ import annotations

import time

import pytest
from textual.widgets import DataTable, Static

from workbench import runs
from workbench.tui.app import PicochatApp
from workbench.tui.widgets.plot import MetricPlot

SIZE = (140, 44)


async def wait_until(pilot, condition, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        await pilot.pause(0.25)
    return condition()


@pytest.mark.slow
async def test_launch_pretraining_from_the_config_screen_and_watch_it(make_tiny_config, tmp_path):
    cfg = make_tiny_config(train={"steps": 30, "eval_every": 10, "save_every": 15})
    config_path = cfg.base_dir / "config.toml"
    app = PicochatApp(cfg.out_dir.parent)
    async with app.run_test(size=SIZE) as pilot:
        app.open_config(config_path)
        await pilot.pause()
        await pilot.press("ctrl+l", "p")
        await pilot.pause()
        assert app.current_mode == "dashboard" and app.current_run == cfg.out_dir
        loss = app.screen.query_one("#plot-loss", MetricPlot)
        assert await wait_until(pilot, lambda: loss.lines and len(loss.lines[0].ys) >= 5, 90), \
            (cfg.out_dir / "train.log").read_text()
        assert await wait_until(pilot, lambda: runs.effective_state(runs.read_status(cfg.out_dir)) == "done", 120), \
            (cfg.out_dir / "train.log").read_text()
        await pilot.pause(1.0)
        assert len(loss.lines[0].ys) == 30
        assert app.screen.query_one("#plot-val_bpb", MetricPlot).lines[0].ys
        headline = str(app.screen.query_one("#dash-headline", Static).render())
        assert "done" in headline and "step 30/30" in headline
        await pilot.press("f5")
        await pilot.pause()
        names = [str(app.screen.query_one(DataTable).get_row_at(i)[1])
                 for i in range(app.screen.query_one(DataTable).row_count)]
        assert names[-1] == "step_000030"


@pytest.mark.slow
async def test_chat_with_a_real_checkpoint(tiny_checkpoint):
    app = PicochatApp(tiny_checkpoint.parent.parent.parent)
    async with app.run_test(size=SIZE) as pilot:
        app.open_chat(tiny_checkpoint)
        await pilot.pause()
        screen = app.screen
        assert await wait_until(pilot, lambda: "ready" in str(screen.query_one("#chat-status").render()), 60)
        screen.query_one("#chat-max_tokens").value = "16"
        await pilot.press(*"Hello", "enter")
        assert await wait_until(pilot, lambda: not screen.answering, 60)
        assert screen.messages[-1]["role"] == "assistant"
        assert "done" in str(screen.query_one("#chat-status").render())
