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
from textual.widgets import Button, DataTable, Input, Markdown, OptionList, Static, TextArea
from tui_helpers import until

from workbench import config as config_module
from workbench import runs
from workbench.errors import BadInput
from workbench.tui.app import PicochatApp
from workbench.tui.launch import launch_stage, rebase_paths, suggested_stage
from workbench.tui.screens.chat import ChatScreen
from workbench.tui.screens.config import ConfigScreen
from workbench.tui.series import RunMetrics, Series, Summary, downsample, ema
from workbench.tui.widgets.dialogs import ConfirmDialog, PromptDialog
from workbench.tui.widgets.plot import MetricPlot

SIZE = (140, 44)


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


def notes(app) -> list[str]:
    return [notification.message for notification in app._notifications]


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
        assert isinstance(app.screen, ConfirmDialog)  # a stop asks first
        await pilot.press("n")
        assert writer.poll_control() == []
        await pilot.press("s", "y")
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


async def test_missing_runs_folder_shows_how_to_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = PicochatApp(tmp_path / "nowhere")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        message = text_of(app.screen.query_one("#runs-empty", Static))
        assert "does not exist" in message and "start the tiny run" in message and "configs/tiny.toml" in message
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, ConfigScreen)
        assert app.screen.query_one("#config-path", Input).value == "configs/new.toml"
        assert '[run]' in app.screen.query_one(TextArea).text
        await pilot.press("escape", "f4")  # a dashboard with nothing to show says so
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
        # the watcher thread reads it, with nothing else asking
        assert await until(pilot, lambda: len(loss.lines[0].ys) == 10 and "loss 4.0" in text_of(
            app.screen.query_one("#dash-log", Static)))
        assert app.screen.query_one("#plot-val_bpb", MetricPlot).lines[0].ys == [1.25]
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
    data it fails fast, and says so in its log and status.json, which the Data screen shows, and the
    app reports its error line."""
    monkeypatch.chdir(tmp_path)
    app = PicochatApp(tmp_path / "runs")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.pause()
        path = app.screen.query_one("#config-path", Input)
        path.value = "configs/mine.toml"
        editor = app.screen.query_one(TextArea)
        editor.load_text(editor.text.replace(f'out_dir = "{tmp_path}/runs/new"', f'out_dir = "{tmp_path}/runs/mine"'))
        assert f'out_dir = "{tmp_path}/runs/mine"' in editor.text
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert app.screen.query_one(OptionList).highlighted_option.id == "prepare"  # what the run needs next
        await pilot.press("t")
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
        # The app watched the worker it started: its error line is on screen, not only in the log.
        deadline = time.time() + 20
        while time.time() < deadline and app.launched:
            await pilot.pause(0.2)
        failures = [note for note in notes(app) if "tokenizer of mine failed" in note]
        assert failures and "no prepared training data" in failures[0]


# ---- Checkpoints and evals ----


async def test_checkpoint_browser_diff_export_delete(runs_dir, tmp_path):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        rows = table_rows(table)
        assert [row[0:2] for row in rows] == [["d4-failed", "step_000100"], ["tiny-done", "step_000100"],
                                              ["tiny-done", "step_000200"], ["tiny-done", "step_000300"]]
        assert rows[3][5] == "2.6000" and rows[3][8] == "arc-easy, bpb, gsm8k"
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
        assert await until(pilot, lambda: table.row_count == 3)


async def test_checkpoint_browser_shows_every_column_at_80_columns(runs_dir):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        headers = [str(column.label) for column in table.columns.values()]
        assert headers == ["run", "checkpoint", "stage", "step", "tokens", "val bpb", "disk", "evals"]
        assert table.virtual_size.width <= table.size.width  # nothing scrolls off the right edge
        assert table_rows(table)[3][-1] == "arc-easy…"  # the evals list cut to what is left
        await pilot.resize_terminal(140, 44)
        assert await until(pilot, lambda: "weights" in [str(column.label) for column in table.columns.values()])
        assert table_rows(table)[3][-1] == "arc-easy, bpb, gsm8k"


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
        writer = runs.RunWriter(runs_dir / "tiny-done-eval", "eval")  # evals write beside the run
        checkpoint = runs_dir / "tiny-done" / "checkpoints" / "step_000300"
        writer.event(f"eval of {checkpoint}", checkpoint=str(checkpoint.resolve()))
        writer.progress(3, 10, "examples", task="arc-easy")
        assert await until(pilot, lambda: "3/10 examples of arc-easy" in text_of(
            app.screen.query_one("#eval-status", Static)))


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


async def test_chat_says_why_the_model_process_exited(runs_dir):
    # A refused checkpoint (meta.json from a newer picochat, issue 19 item 7): the worker prints one
    # error line and exits 2; the status kept only "exited (code 2)" and lost the reason.
    refused = ('{"type": "error", "message": "step_000300/meta.json: format_version 99 is newer than this '
               'picochat reads (1); update picochat"}')
    app = PicochatApp(runs_dir)
    app.chat_worker_command = lambda checkpoint: [sys.executable, "-c", f"print({refused!r}); raise SystemExit(2)"]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f7")
        status = app.screen.query_one("#chat-status", Static)
        assert await until(pilot, lambda: "exited" in text_of(status))
        assert text_of(status) == ("the model process exited (code 2): step_000300/meta.json: format_version 99 "
                                   "is newer than this picochat reads (1); update picochat")


def test_picochat_tui_rejects_extra_arguments():
    result = subprocess.run([sys.executable, "-m", "workbench.tui.app", "a", "b"], capture_output=True,
                            text=True, cwd=Path(__file__).parents[1], env={**os.environ, "TERM": "dumb"})
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr


# ---- what a first walk through the TUI found (each test: the behaviour that was missing) ----


def test_summary_matches_a_fresh_count_as_points_arrive():
    xs = [float(i) for i in range(1, 30_001)]
    ys = [float((i * 7919) % 101) for i in range(30_000)]
    ys[12_345] = 1e6  # a spike
    growing_x: list[float] = []
    growing_y: list[float] = []
    summary = Summary(growing_x, growing_y, max_blocks=200)
    for start in range(0, 30_000, 7_000):  # points arrive in batches, as a live run's do
        growing_x.extend(xs[start:start + 7_000])
        growing_y.extend(ys[start:start + 7_000])
        summary.means(100)
    assert len(summary.blocks) <= 200
    mean_x, mean_y = summary.means(100)
    assert len(mean_y) == 100
    units = summary.units()  # every point counted exactly once
    assert sum(unit[0] for unit in units) == 30_000 and sum(unit[2] for unit in units) == pytest.approx(sum(ys))
    assert mean_x == sorted(mean_x)
    low_x, low_y = summary.extremes(50)
    assert len(low_y) <= 100 and max(low_y) == 1e6 and low_x[low_y.index(1e6)] == 12_346.0
    assert (mean_x, mean_y) == Summary(xs, ys, max_blocks=200).means(100)  # incremental == from scratch


def test_a_resumed_run_replaces_the_steps_it_logs_again(tmp_path):
    writer = live_run(tmp_path, steps=10)
    writer.log("eval", 10, val_bpb=2.0)
    metrics = RunMetrics(writer.dir)
    metrics.poll()
    smoothed_before = metrics.series["loss"].smoothed(0.9)
    for step in range(6, 9):  # crashed after step 10, resumed from the step 5 checkpoint
        writer.log("train", step, loss=1.0, lr=0.02, grad_norm=1.0, tokens=step * 512,
                   tokens_per_second=1000.0, mfu=1.0)
    metrics.poll()
    assert metrics.series["loss"].step == [1, 2, 3, 4, 5, 6, 7, 8]
    assert metrics.series["loss"].value[-3:] == [1.0, 1.0, 1.0]
    assert metrics.series["loss"].smoothed(0.9) is not smoothed_before  # recomputed, not extended
    assert metrics.series["val_bpb"].step == [10]  # other metrics keep theirs until they repeat


def test_elapsed_time_leaves_out_pauses_and_the_gap_before_a_resume(tmp_path):
    metrics = RunMetrics(tmp_path)
    records = [(50.0, "train", 1), (100.0, "event", "paused at step 5"), (160.0, "event", "resumed at step 5"),
               (170.0, "train", 6), (200.0, "event", "paused at step 9")]
    for t, kind, what in records:
        record = {"t": t, "kind": kind, "step": what if kind == "train" else 5, "loss": 1.0, "step_seconds": 2.0}
        metrics.add({**record, "message": what} if kind == "event" else record)
    # step 1 took 2 s; 50 s to the pause; 10 s from the unpause to step 6; 30 s more to the second pause
    assert metrics.elapsed(220.0) == pytest.approx(2 + 50 + 10 + 30)
    metrics.add({"t": 900.0, "step": 9, "kind": "sys"})  # killed while paused, resumed much later
    metrics.add({"t": 905.0, "step": 10, "kind": "train", "loss": 1.0, "step_seconds": 5.0})
    assert metrics.elapsed(905.0) == pytest.approx(92 + 5)  # the gap is no training time
    assert metrics.series["loss"].time == pytest.approx([2.0, 62.0, 97.0])  # the time axis is that clock


async def test_dashboard_says_paused_and_stops_the_clock(runs_dir):
    writer = live_run(runs_dir, "live")
    writer.write_status(state="paused")
    now = time.time()
    lines = [{"t": now - 100 + i * 10, "step": i, "kind": "train", "stage": "pretrain", "loss": 4.0, "step_seconds": 10}
             for i in range(1, 5)] + [{"t": now - 60, "step": 4, "kind": "event", "message": "paused at step 4"}]
    (writer.dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        app.open_run(writer.dir)
        await pilot.pause()
        # the run loads off the UI thread: wait for it rather than for one frame (a busy machine is slower)
        assert await until(pilot, lambda: "ETA paused" in text_of(app.screen.query_one("#dash-headline", Static)))
        headline = text_of(app.screen.query_one("#dash-headline", Static))
        assert "elapsed 0m40s" in headline  # 10 s for step 1, 30 s to step 4; the minute since is a pause
        await pilot.press("x", "x")
        plot = app.screen.query_one("#plot-loss", MetricPlot)
        assert await until(pilot, lambda: plot.lines and plot.lines[0].xs == [10, 20, 30, 40])  # the same clock


async def test_dashboard_log_panel_shows_the_newest_line(runs_dir):
    writer = live_run(runs_dir, "live", steps=1)
    long_lines = [f"step {i:6d}/1000 | loss 4.0 | lr 2.00e-02 | grad norm 0.330 | 4,481 tok/s | mfu 53.9% and more"
                  for i in range(200)]
    (writer.dir / "train.log").write_text("\n".join(long_lines) + "\n")
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        app.open_run(writer.dir)
        await pilot.pause()
        await pilot.pause()
        app.screen.update_log()
        log = text_of(app.screen.query_one("#dash-log", Static))
        assert "step    199/1000" in log and "step      0/1000" not in log


async def test_config_saved_in_another_folder_still_finds_its_sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repo: assets/ is not here
    app = PicochatApp(tmp_path / "runs")
    async with app.run_test(size=SIZE) as pilot:
        app.open_config(config_module.default_config_path())
        await pilot.pause()
        path = app.screen.query_one("#config-path", Input)
        path.value = str(tmp_path / "elsewhere" / "mine.toml")
        await pilot.press("ctrl+s")
        await pilot.pause()
        saved = (tmp_path / "elsewhere" / "mine.toml").read_text()
        assert "# The embedded default" in saved  # comments and layout kept
        cfg = config_module.load(tmp_path / "elsewhere" / "mine.toml")
        assert all(cfg.resolve_path(source).is_file() for source in cfg.data.sources)
        assert cfg.out_dir == config_module.REPO_DIR / "runs" / "tiny"  # the run goes where it would have
        assert app.screen.query_one(TextArea).text == saved
        assert any("absolute" in note for note in notes(app))


def test_rebase_leaves_paths_that_resolve_the_same_alone(tmp_path):
    text = '[run]\nname = "x"\nout_dir = "/abs/run"\n[data]\nsources = ["a.txt", "b.txt"]  # two\n'
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a.txt").write_text("a")
    new_text, rewritten = rebase_paths(text, tmp_path / "old", tmp_path / "new")
    assert rewritten == ["a.txt", "b.txt"]
    assert f'sources = ["{tmp_path}/old/a.txt", "{tmp_path}/old/b.txt"]  # two' in new_text
    assert rebase_paths(text, tmp_path / "old", tmp_path / "old") == (text, [])


def test_rebase_rewrites_only_the_values_keeping_comments_escapes_and_inline_tables(tmp_path):
    # The hand line scanner this replaced rewrote "a.txt" inside the comment instead of the list
    # item, missed a value written with an escape ("tok\u0065n.json") or as UTF-8 ("café"), and
    # missed keys in an inline table (no [sft] header).
    import tomllib

    text = ('# my config\nsft = { init_from = "runs/base", steps = 5 }  # inline\n\n'
            '[run]\nname = "x"\nout_dir = "/abs/run"\n\n'
            '[data]\nsources = [  # "a.txt" is the corpus\n  "a.txt",\n  \'café.txt\',\n]\n\n'
            '[tokenizer]\npath = "tok\\u0065n.json"  # escaped\n')
    old, new = tmp_path / "old", tmp_path / "new"
    new_text, rewritten = rebase_paths(text, old, new)
    assert rewritten == ["a.txt", "café.txt", "token.json", "runs/base"]
    values = tomllib.loads(new_text)
    assert values["data"]["sources"] == [str(old / "a.txt"), str(old / "café.txt")]
    assert values["tokenizer"]["path"] == str(old / "token.json")
    assert values["sft"] == {"init_from": str(old / "runs" / "base"), "steps": 5}
    for kept in ('# my config\n', '  # inline\n', '[  # "a.txt" is the corpus\n', '  # escaped\n',
                 'out_dir = "/abs/run"\n'):
        assert kept in new_text, kept


def test_launch_refuses_to_overwrite_a_run_with_checkpoints(make_tiny_config):
    cfg = make_tiny_config()
    config_path = cfg.base_dir / "config.toml"
    assert suggested_stage(cfg) == "pretrain"  # data and tokenizer are there
    (cfg.out_dir / "checkpoints" / "step_000040").mkdir(parents=True)  # all 40 steps: sft is next
    (cfg.out_dir / "checkpoints" / "step_000040" / "meta.json").write_text('{"step": 40, "stage": "pretrain"}')
    assert suggested_stage(cfg) == "sft"
    with pytest.raises(BadInput, match="already has checkpoints .newest step_000040.: resume it"):
        launch_stage("pretrain", config_path)
    assert not (cfg.out_dir / "train.log").exists()  # nothing was started


async def test_resume_asks_first_and_names_the_newest_checkpoint(runs_dir):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        names = [row[0] + "/" + row[1] for row in table_rows(table)]
        table.move_cursor(row=names.index("tiny-done/step_000200"))
        await pilot.press("r")  # all 300 of 300 steps done: nothing to resume
        await pilot.pause()
        assert any("has done all 300 steps" in note for note in notes(app))
        assert not isinstance(app.screen, ConfirmDialog)
        table.move_cursor(row=names.index("d4-failed/step_000100"))
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        assert app.screen.question == "Resume sft of d4-failed from step_000100, step 100 -> 150?"
        log_before = (runs_dir / "d4-failed" / "train.log").read_text()
        await pilot.press("n")
        await pilot.pause()
        assert app.launched == [] and (runs_dir / "d4-failed" / "train.log").read_text() == log_before


async def test_int8_copies_are_listed_and_cannot_be_trained_or_quantized_again(runs_dir):
    source = runs_dir / "tiny-done" / "checkpoints" / "step_000300"
    copy = runs_dir / "tiny-done" / "int8" / "step_000300"
    shutil.copytree(source, copy)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "quantization": "int8"}))
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        names = [row[0] + "/" + row[1] for row in table_rows(table)]
        assert names[-1] == "tiny-done/int8/step_000300"
        table.move_cursor(row=len(names) - 1)
        await pilot.press("i", "r")
        await pilot.pause()
        assert any("already an INT8 copy" in note for note in notes(app))
        assert any("cannot be trained on" in note for note in notes(app))
        assert app.launched == []


async def test_runs_screen_tells_what_to_do_with_a_crashed_run(runs_dir):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        rows = {row[0]: row for row in table_rows(app.screen.query_one(DataTable))}
        assert rows["wide-crashed"][1] == "crashed" and "r resumes" in rows["wide-crashed"][7]
        table = app.screen.query_one(DataTable)
        table.move_cursor(row=list(rows).index("wide-crashed"))
        await pilot.press("r")  # it never saved a checkpoint
        await pilot.pause()
        assert any("no checkpoint to resume from" in note for note in notes(app))
