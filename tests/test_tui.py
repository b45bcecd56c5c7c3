"""The workbench TUI driven by real key presses (Textual's Pilot) against real run folders: the
recorded ones in tests/fixtures/runs (copied, since some tests delete things) and live ones written
here the way a worker writes them (workbench.runs.RunWriter)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from textual.widgets import Button, DataTable, Input, Markdown, Static, TextArea

from workbench import runs
from workbench.tui.app import PicochatApp
from workbench.tui.screens.chat import ChatScreen
from workbench.tui.screens.config import ConfigScreen
from workbench.tui.series import RunMetrics, Series, downsample, ema
from workbench.tui.widgets.dialogs import ConfirmDialog, PromptDialog
from workbench.tui.widgets.plot import MetricPlot

FIXTURE_RUNS = Path(__file__).parent / "fixtures" / "runs"
SIZE = (140, 44)


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    target = tmp_path / "runs"
    shutil.copytree(FIXTURE_RUNS, target, ignore=shutil.ignore_patterns("*.py"))
    return target


def live_run(runs_dir: Path, name: str = "live", steps: int = 0) -> runs.RunWriter:
    """A run folder being written right now by this process (so its pid is alive)."""
    writer = runs.RunWriter(runs_dir / name, "pretrain", total_steps=100)
    writer.write_status(state="running")
    for step in range(1, steps + 1):
        writer.log("train", step, loss=5.0 - step * 0.01, lr=0.02, grad_norm=1.0, tokens=step * 512,
                   tokens_per_second=1000.0, mfu=1.0)
        writer.heartbeat(step, tokens=step * 512)
    return writer


def text_of(widget: Static) -> str:
    return str(widget.render())


def table_rows(table: DataTable) -> list[list[str]]:
    return [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]


# ---- pure parts: downsampling and smoothing ----


def test_downsample_keeps_extremes_and_bounds_points():
    xs = list(range(100_000))
    ys = [float(i % 1000) for i in xs]
    ys[54_321] = 1e6  # a spike must survive
    out_x, out_y = downsample(xs, ys, 200)
    assert len(out_y) <= 400
    assert max(out_y) == 1e6 and out_x[out_y.index(1e6)] == 54_321
    assert out_x == sorted(out_x)
    assert downsample([1, 2], [3, 4], 200) == ([1, 2], [3, 4])


def test_incremental_ema_matches_batch_ema():
    series = Series()
    values = [float((i * 7919) % 13) for i in range(500)]
    series.value.extend(values[:200])
    series.smoothed(0.9)
    series.value.extend(values[200:])
    assert series.smoothed(0.9) == pytest.approx(ema(values, 0.9))
    assert series.smoothed(0.5) == pytest.approx(ema(values, 0.5))
    assert ema(values, 0.0) == values


def test_run_metrics_reads_only_new_records_and_skips_corrupt_lines(tmp_path):
    writer = live_run(tmp_path, steps=3)
    metrics = RunMetrics(writer.dir)
    assert metrics.poll() == 3
    with open(writer.dir / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "step": 4, "loss": \n')  # corrupt
    writer.log("eval", 4, val_bpb=1.5)
    assert metrics.poll() == 1
    assert metrics.bad_lines == 1
    assert metrics.best_val_bpb == 1.5
    assert metrics.series["loss"].step == [1, 2, 3]


def test_tui_never_imports_torch():
    code = "import workbench.tui.app, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr


# ---- Runs screen ----


async def test_runs_screen_shows_every_state(runs_dir):
    live_run(runs_dir, "live", steps=5)
    stalled = live_run(runs_dir, "stalled", steps=2)
    status = json.loads((stalled.dir / "status.json").read_text())
    status["heartbeat"] = time.time() - 3600
    (stalled.dir / "status.json").write_text(json.dumps(status))
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        rows = {row[0]: row for row in table_rows(app.screen.query_one(DataTable))}
        assert rows["tiny-done"][1] == "done" and rows["tiny-done"][3] == "300/300"
        assert rows["d4-failed"][1] == "failed" and "NaN" in rows["d4-failed"][7]
        assert rows["wide-crashed"][1] == "crashed"
        assert rows["live"][1] == "running" and rows["live"][4] == "4.9500"
        assert rows["stalled"][1] == "stalled"


async def test_runs_screen_controls_a_live_run(runs_dir):
    writer = live_run(runs_dir, "live", steps=1)
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.screen.selected_run().name == "live"  # newest heartbeat first
        await pilot.press("p")
        assert writer.poll_control() == ["pause"]
        await pilot.press("u")
        assert writer.poll_control() == ["resume"]
        await pilot.press("s")
        assert writer.poll_control() == ["stop"]


async def test_runs_screen_deletes_only_after_confirmation(runs_dir):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        names = [row[0] for row in table_rows(table)]
        table.move_cursor(row=names.index("d4-failed"))
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        assert (runs_dir / "d4-failed").is_dir()
        await pilot.press("d", "y")
        await pilot.pause()
        assert not (runs_dir / "d4-failed").exists()
        assert "d4-failed" not in [row[0] for row in table_rows(app.screen.query_one(DataTable))]


async def test_missing_runs_folder_shows_how_to_start(tmp_path):
    app = PicochatApp(tmp_path / "nowhere")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        message = text_of(app.screen.query_one("#runs-empty", Static))
        assert "does not exist" in message and "n" in message and "configs/tiny.toml" in message
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, ConfigScreen)
        assert app.screen.query_one("#config-path", Input).value.endswith("new.toml")
        assert '[run]' in app.screen.query_one(TextArea).text
        await pilot.press("f4")  # a dashboard with nothing to show says so
        await pilot.pause()
        assert "No run to show" in text_of(app.screen.query_one("#dash-headline", Static))


# ---- Dashboard ----


async def test_dashboard_follows_a_growing_run(runs_dir):
    writer = live_run(runs_dir, "live", steps=3)
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        assert app.current_mode == "dashboard"
        loss = app.screen.query_one("#plot-loss", MetricPlot)
        assert [len(line.ys) for line in loss.lines] == [3, 3]  # raw and smoothed
        for step in range(4, 11):
            writer.log("train", step, loss=4.0, lr=0.02, grad_norm=1.0, tokens=step * 512,
                       tokens_per_second=1000.0, mfu=1.0)
            writer.heartbeat(step, tokens=step * 512)
        writer.log("eval", 10, val_bpb=1.25)
        writer.log("sample", 10, prompt="Once", text=" upon a time")
        with open(writer.dir / "metrics.jsonl", "a") as handle:
            handle.write("{not json\n")
        (writer.dir / "train.log").write_text("step 10 | loss 4.0\n")
        await pilot.pause(0.8)
        assert len(loss.lines[0].ys) == 10
        assert app.screen.query_one("#plot-val", MetricPlot).lines[0].ys == [1.25]
        headline = text_of(app.screen.query_one("#dash-headline", Static))
        assert "step 10/100" in headline and "best val bpb 1.2500" in headline
        assert "1 corrupt metrics line" in headline
        assert "upon a time" in text_of(app.screen.query_one("#dash-sample", Static))
        assert "loss 4.0" in text_of(app.screen.query_one("#dash-log", Static))


async def test_dashboard_keys_change_axis_scale_smoothing_and_overlay(runs_dir):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        app.open_run(runs_dir / "tiny-done")
        await pilot.pause()
        screen = app.screen
        loss = screen.query_one("#plot-loss", MetricPlot)
        assert loss.lines[0].xs[:2] == [1, 2]
        await pilot.press("x")
        assert screen.x_axis == "tokens" and loss.lines[0].xs[:2] == [2048, 4096]
        await pilot.press("x")
        assert screen.x_axis == "time" and loss.lines[0].xs[0] == pytest.approx(0.5)
        await pilot.press("l")
        assert loss.log_y
        before = list(loss.lines[1].ys)
        await pilot.press("right_square_bracket")
        assert screen.smoothing > 0.9 and loss.lines[1].ys != before
        await pilot.press("o")
        await pilot.pause()
        await pilot.press("space", "enter")  # tick the first other run
        await pilot.pause()
        assert len(screen.overlay) == 1
        assert len(loss.lines) == 3  # raw + this run smoothed + the overlaid run
        assert {line.label for line in loss.lines[1:]} == {"tiny-done", screen.overlay[0].name}
        await pilot.pause(0.2)
        # each line: a mean per column plus the min and max dots, never all 300 points
        assert 0 < loss.point_count() <= 3 * 3 * loss.size.width < 3 * 300


async def test_dashboard_reports_a_missing_run_folder(runs_dir):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        app.open_run(runs_dir / "gone")
        await pilot.pause()
        await pilot.press("s")  # nothing to stop: must not create the folder
        assert "run folder missing" in text_of(app.screen.query_one("#dash-headline", Static))
        assert not (runs_dir / "gone").exists()


# ---- Config ----


async def test_invalid_config_shows_errors_with_lines_and_cannot_launch(runs_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        app.open_config(runs_dir / "tiny-done" / "config.toml")
        await pilot.pause()
        editor = app.screen.query_one(TextArea)
        editor.load_text(editor.text.replace("steps = 300", "steps = 0\nstepz = 3"))
        await pilot.pause()
        errors = text_of(app.screen.query_one("#config-errors", Static))
        assert "config.toml:23: [train] steps: must be >= 1" in errors
        assert "config.toml:24: [train] unknown key 'stepz' (did you mean 'steps'?)" in errors
        assert app.screen.query_one("#config-launch", Button).disabled
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert not (runs_dir / "tiny-done" / "runs").exists()  # nothing was launched
        editor.load_text(editor.text.replace("steps = 0\nstepz = 3", "steps = 300"))
        await pilot.pause()
        assert "valid" in text_of(app.screen.query_one("#config-errors", Static))


async def test_config_saves_and_launches_a_detached_worker(tmp_path, monkeypatch):
    """A real `picochat tokenizer` worker, started detached from the Config screen; with no prepared
    data it fails fast, and says so in its log and status.json, which the Data screen shows."""
    monkeypatch.chdir(tmp_path)
    app = PicochatApp(tmp_path / "runs")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.pause()
        path = app.screen.query_one("#config-path", Input)
        path.value = "configs/mine.toml"
        editor = app.screen.query_one(TextArea)
        editor.load_text(editor.text.replace('out_dir = "runs/tiny"', f'out_dir = "{tmp_path}/runs/mine"'))
        app.screen.query_one("#config-stage").value = "tokenizer"
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert (tmp_path / "configs" / "mine.toml").read_text() == editor.text
        assert app.current_mode == "data"
        log = tmp_path / "runs" / "mine" / "train.log"
        deadline = time.time() + 20
        while time.time() < deadline and "prepare" not in (log.read_text() if log.exists() else ""):
            await pilot.pause(0.2)
        assert "no prepared training data" in log.read_text()
        await pilot.pause(1.2)
        assert "failed" in text_of(app.screen.query_one("#data-status", Static))


# ---- Checkpoints and evals ----


async def test_checkpoint_browser_diff_export_delete(runs_dir, tmp_path):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        rows = table_rows(table)
        assert [row[1:3] for row in rows] == [["d4-failed", "step_000100"], ["tiny-done", "step_000100"],
                                              ["tiny-done", "step_000200"], ["tiny-done", "step_000300"]]
        assert rows[3][6] == "2.6000" and rows[3][8] == "arc-easy, bpb, gsm8k"
        await pilot.press("space", "down", "down", "down", "space")
        diff = app.screen.diff_text
        assert '-name = "d4-failed"' in diff and '+name = "tiny-done"' in diff and "-depth = 4" in diff
        await pilot.press("x")
        assert isinstance(app.screen, PromptDialog)
        app.screen.query_one(Input).value = str(tmp_path / "exported")
        await pilot.press("enter")
        await pilot.pause()
        assert (tmp_path / "exported" / "meta.json").is_file()
        await pilot.press("d", "y")
        await pilot.pause()
        assert not (runs_dir / "tiny-done" / "checkpoints" / "step_000300").exists()
        assert table.row_count == 3


async def test_eval_screen_shows_results_of_the_run_and_live_progress(runs_dir):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await pilot.pause()
        app.screen.query_one(DataTable).move_cursor(row=3)
        await pilot.press("e")
        await pilot.pause()
        assert app.current_mode == "evals"
        results = app.screen.query_one("#eval-results", DataTable)
        assert table_rows(results) == [["step_000200", "0.2500", "2.7100", "-"],
                                       ["step_000300", "0.2800", "2.6000", "0.0000"]]
        writer = runs.RunWriter(runs_dir / "tiny-done", "eval")
        writer.progress(3, 10, "examples", task="arc-easy")
        await pilot.pause(1.3)
        assert "3/10 examples arc-easy" in text_of(app.screen.query_one("#eval-status", Static))


# ---- Data ----


async def test_data_screen_shows_manifest_and_colored_tokens(tmp_path, tiny_config_path, tiny_data,
                                                             tiny_tokenizer_path):
    app = PicochatApp(tmp_path / "runs")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await pilot.pause()
        app.screen.load_config(tiny_config_path)
        for _ in range(50):
            await pilot.pause(0.1)
            if "vocab" in text_of(app.screen.query_one("#data-result", Static)):
                break
        result = text_of(app.screen.query_one("#data-result", Static))
        assert "vocab      512" in result and "chars/token" in result and "documents" in result.lower()
        sample = app.screen.query_one("#data-sample", Static).render()
        assert len(sample.spans) > 10  # one colored span per token
        assert len({span.style for span in sample.spans}) > 1


# ---- Chat (a scripted model process speaking the worker protocol) ----

FAKE_WORKER = textwrap.dedent('''
    import json, sys, time
    def send(**event):
        print(json.dumps(event), flush=True)
    send(type="ready", model="fake", params=1234567)
    for line in sys.stdin:
        request = json.loads(line)
        if request["type"] != "chat":
            continue
        last = request["messages"][-1]["content"]
        send(type="thought", text="let me add")
        send(type="tool_call", text="2+2")
        send(type="tool_output", text="4")
        for piece in ["**", "four", "**", " (", str(len(request["messages"])), ")"]:
            send(type="text", text=piece)
        send(type="done", finish_reason="stop", completion_tokens=6, seconds=0.5)
''')


async def test_chat_streams_answers_with_thoughts_and_tool_calls(runs_dir, tmp_path):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    app = PicochatApp(runs_dir)
    app.chat_worker_command = lambda checkpoint: [sys.executable, str(script), str(checkpoint)]
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f7")
        await pilot.pause(0.5)
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        for _ in range(30):
            if "ready" in text_of(screen.query_one("#chat-status", Static)):
                break
            await pilot.pause(0.1)
        assert "1.2M params" in text_of(screen.query_one("#chat-status", Static))
        screen.query_one("#chat-temperature", Input).value = "0.5"
        await pilot.press(*"what is 2+2", "enter")
        for _ in range(30):
            await pilot.pause(0.1)
            if not screen.answering:
                break
        assert screen.messages[-1] == {"role": "assistant", "content": [
            {"type": "thinking", "text": "let me add"}, {"type": "python", "text": "2+2"},
            {"type": "python_output", "text": "4"}, {"type": "text", "text": "**four** (1)"}]}
        assert screen.query_one(".tool-call", Static) and screen.query_one(".tool-output", Static)
        assert screen.query_one(Markdown).source == "**four** (1)"
        assert screen.last_answer() == "**four** (1)"
        await pilot.press(*"again", "enter")
        for _ in range(30):
            await pilot.pause(0.1)
            if not screen.answering:
                break
        assert screen.last_answer() == "**four** (3)"  # the whole conversation was sent
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert screen.messages == [] and not screen.query(Markdown)
        screen.query_one("#chat-max_tokens", Input).value = "many"
        await pilot.press(*"hi", "enter")
        assert screen.messages == []  # a bad sampling setting is refused, not sent
    assert screen.process is None  # the model process ends with the app


def test_picochat_tui_rejects_extra_arguments():
    result = subprocess.run([sys.executable, "-m", "workbench.tui.app", "a", "b"], capture_output=True,
                            text=True, cwd=Path(__file__).parents[1], env={**os.environ, "TERM": "dumb"})
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr
