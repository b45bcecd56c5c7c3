"""Run-folder readers against garbage: wrongly typed status.json and metrics records, deep nesting.

Every reader (read_status, run_info, read_metrics, MetricsTail, `picochat runs/status/stop`, the
TUI) must survive any JSON a broken or hostile writer leaves behind: the CLI exits 0 (or 2 with
one line), the TUI stays up, and no consumer ever sees a field of the wrong type.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from textual.widgets import DataTable

from workbench import runs
from workbench.cli import main
from workbench.tui.app import PicochatApp
from workbench.tui.series import RunMetrics

DEEP = "[" * 50_000  # json.loads recurses once per bracket: RecursionError, not JSONDecodeError

GARBAGE_STATUS = {
    "list": "[]",
    "string": '"running"',
    "null": "null",
    "step-text": '{"state": "done", "step": "abc"}',
    "pid-text": '{"state": "running", "pid": "abc"}',
    "deep": DEEP,
    "deep-field": '{"state": "done", "message": ' + DEEP + "}",
    "all-wrong": ('{"state": 7, "stage": [1], "pid": true, "host": 5, "step": 1e400, "total_steps": "x", '
                  '"tokens": NaN, "eta_seconds": "soon", "heartbeat": "now", "started": {}, "message": [2], '
                  '"progress": "half", "progress_total": [], "progress_unit": 3, "best_val_bpb": "good"}'),
    "infinite-step": '{"state": "done", "step": Infinity, "tokens": -Infinity, "total_steps": NaN}',
    "negative-pid": '{"state": "running", "pid": -1}',  # os.kill(-1, ...) reaches every process we own
    "huge-pid": '{"state": "running", "pid": 100000000000000000000000}',
    "not-utf8": b'{"state": "\xff\xfe"}',
    "huge-numbers": '{"state": "done", "heartbeat": 1' + "0" * 400 + ', "step": 1' + "0" * 400 + "}",
    "too-many-digits": '{"state": "done", "step": 1' + "0" * 5000 + "}",  # json refuses: ValueError
    "nulls": '{"state": null, "stage": null, "message": null, "host": null, "step": null, "pid": null}',
    "unknown-state": '{"state": "[/]exploded", "pid": 1}',
    "markup": '{"state": "done", "stage": "[/]", "message": "[/] [bold]x[/bold", "progress": 1, '
              '"progress_unit": "[/]"}',  # text, not Rich markup
}

GARBAGE_METRICS = {
    "loss-text": '{"kind": "train", "step": 1, "loss": "abc"}',
    "all-text": '{"kind": "train", "step": "abc", "t": "now", "loss": "x", "tokens": "many", '
                '"tokens_per_second": "fast", "mfu": [], "lr": {}, "grad_norm": "big"}',
    "non-finite": '{"kind": "train", "step": 1e400, "loss": NaN, "tokens_per_second": Infinity}',
    "bool-numbers": '{"kind": "train", "step": true, "loss": false}',
    "deep": DEEP,
    "kind-list": '{"kind": ["train"], "step": 1, "loss": 1.0}',
    "progress-text": '{"kind": "progress", "stage": "eval", "done": "abc", "total": [], "unit": 5}',
    "markup": '{"kind": "progress", "stage": "eval", "done": 1, "total": 2, "unit": "[/]", "task": "[/]"}',
    "eval-text": '{"kind": "eval", "step": 2, "val_bpb": "best"}',
    "huge-int": '{"kind": "train", "step": 2, "loss": 1' + "0" * 400 + ', "tokens_per_second": 1' + "0" * 400 + "}",
    "too-many-digits": '{"kind": "train", "step": 2, "loss": 1' + "0" * 5000 + "}",
}

NUMERIC_STATUS_FIELDS = ("started", "heartbeat", "eta_seconds", "progress", "progress_total", "best_val_bpb")


def write_run(runs_dir: Path, name: str, status: str | bytes | None = None, metrics: list[str] = ()) -> Path:
    run_dir = runs_dir / name
    run_dir.mkdir(parents=True)
    if status is not None:
        data = status.encode() if isinstance(status, str) else status
        (run_dir / "status.json").write_bytes(data)
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in metrics), encoding="utf-8")
    return run_dir


def good_record(step: int) -> str:
    return json.dumps({"t": 1000.0 + step, "step": step, "kind": "train", "stage": "pretrain", "loss": 2.5,
                       "tokens": 512 * step, "tokens_per_second": 900.0})


def is_number(value) -> bool:
    """Finite, not a bool, and something float() and f"{x:.4f}" accept."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def assert_status_is_typed(status: dict | None) -> None:
    if status is None:
        return
    assert isinstance(status, dict)
    for key in ("state", "stage", "host", "message", "progress_unit"):
        assert key not in status or isinstance(status[key], str), key
    assert status.get("state") is None or status["state"] in runs.STATES
    for key in ("step", "tokens"):
        assert status.get(key) is None or (is_number(status[key]) and isinstance(status[key], int)), key
    assert status.get("total_steps") is None or (isinstance(status["total_steps"], int)
                                                 and not isinstance(status["total_steps"], bool))
    assert status.get("pid") is None or (type(status["pid"]) is int and status["pid"] > 0)
    for key in NUMERIC_STATUS_FIELDS:
        assert status.get(key) is None or is_number(status[key]), key


def assert_record_is_typed(record: dict) -> None:
    assert isinstance(record, dict)
    assert "kind" not in record or isinstance(record["kind"], str)
    for key in ("t", "step", "loss", "lr", "tokens", "tokens_per_second", "mfu", "grad_norm", "val_bpb",
                "done", "total"):
        assert record.get(key) is None or is_number(record[key]), (key, record)


# ---- the library readers ----


@pytest.mark.parametrize("name", list(GARBAGE_STATUS))
def test_read_status_gives_typed_fields_or_none(tmp_path, name):
    run_dir = write_run(tmp_path, name, GARBAGE_STATUS[name], [good_record(1)])
    status = runs.read_status(run_dir)
    assert_status_is_typed(status)
    assert runs.effective_state(status) in (*runs.STATES, "missing", "crashed", "stalled", "unknown")
    info = runs.run_info(run_dir)
    assert isinstance(info.step, int) and isinstance(info.tokens, int)
    assert info.total_steps is None or isinstance(info.total_steps, int)
    assert all(value is None or is_number(value)
               for value in (info.eta_seconds, info.heartbeat, info.loss, info.tokens_per_second))
    assert isinstance(info.stage, str) and isinstance(info.message, str)
    assert info.loss == 2.5  # the good metrics still count


def test_status_fields_that_are_right_survive_the_wrong_ones(tmp_path):
    run_dir = write_run(tmp_path, "mixed", '{"state": "done", "stage": "sft", "step": "abc", "tokens": 4096, '
                                           '"pid": "abc", "total_steps": 300, "eta_seconds": 0, "custom": [1]}')
    status = runs.read_status(run_dir)
    assert status["state"] == "done" and status["stage"] == "sft" and status["tokens"] == 4096
    assert status["total_steps"] == 300 and status["eta_seconds"] == 0
    assert "step" not in status and "pid" not in status
    assert status["custom"] == [1]  # fields this reader does not know pass through untouched


def test_a_negative_pid_is_never_taken_for_a_live_worker(tmp_path):
    run_dir = write_run(tmp_path, "neg", GARBAGE_STATUS["negative-pid"])
    assert runs.effective_state(runs.read_status(run_dir)) == "crashed"


@pytest.mark.parametrize("name", list(GARBAGE_METRICS))
def test_metrics_readers_drop_wrongly_typed_fields(tmp_path, name):
    lines = [good_record(1), GARBAGE_METRICS[name], good_record(3)]
    run_dir = write_run(tmp_path, name, '{"state": "done", "step": 3}', lines)
    records = runs.read_metrics(run_dir)
    for record in records:
        assert_record_is_typed(record)
    assert [r["step"] for r in runs.read_metrics(run_dir, "train") if r.get("loss") == 2.5] == [1, 3]
    tail = runs.MetricsTail(run_dir / "metrics.jsonl")
    tailed = tail.read()
    assert tailed == records
    info = runs.run_info(run_dir)
    assert info.loss is None or is_number(info.loss)
    assert info.tokens_per_second is None or is_number(info.tokens_per_second)
    metrics = RunMetrics(run_dir)
    metrics.poll()
    assert metrics.series["loss"].step[-1] == 3


def test_a_bad_last_train_record_shows_no_loss_rather_than_garbage(tmp_path):
    run_dir = write_run(tmp_path, "last", '{"state": "done"}', [good_record(1), GARBAGE_METRICS["loss-text"]])
    info = runs.run_info(run_dir)
    assert info.loss is None


def test_a_huge_status_file_is_not_read_whole(tmp_path):
    run_dir = write_run(tmp_path, "huge", '{"state": "done", "message": "' + "x" * (4 << 20) + '"}')
    assert runs.read_status(run_dir) is None


def test_a_metrics_line_that_never_ends_is_skipped_without_being_kept(tmp_path):
    run_dir = write_run(tmp_path, "long", '{"state": "done"}', [good_record(1)])
    path = run_dir / "metrics.jsonl"
    tail = runs.MetricsTail(path)
    assert len(tail.read()) == 1
    with open(path, "a") as handle:
        handle.write('{"kind": "train", "text": "' + "x" * (2 * runs.MetricsTail.MAX_LINE_BYTES))
    assert tail.read() == [] and len(tail._partial) == 0 and tail.bad_lines == 1
    with open(path, "a") as handle:
        handle.write("x" * 1000 + '"}\n' + good_record(2) + "\n")
    assert [r["step"] for r in tail.read()] == [2]
    assert tail.bad_lines == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_and_folders_in_place_of_run_files_never_block(tmp_path):
    fifo_status = write_run(tmp_path, "fifo-status")
    os.mkfifo(fifo_status / "status.json")
    fifo_metrics = write_run(tmp_path, "fifo-metrics", '{"state": "done"}')
    (fifo_metrics / "metrics.jsonl").unlink()
    os.mkfifo(fifo_metrics / "metrics.jsonl")
    folders = write_run(tmp_path, "folders")
    (folders / "metrics.jsonl").unlink()
    (folders / "status.json").mkdir()
    (folders / "metrics.jsonl").mkdir()
    for run_dir in (fifo_status, fifo_metrics, folders):
        # opening a FIFO for reading waits for a writer forever: run the verbs where a hang fails
        result = subprocess.run([sys.executable, "-m", "workbench.cli", "status", str(run_dir)],
                                capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
        assert result.returncode == 0, result.stderr
        assert runs.read_metrics(run_dir) == [] and runs.MetricsTail(run_dir / "metrics.jsonl").read() == []
    result = subprocess.run([sys.executable, "-m", "workbench.cli", "runs", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert result.returncode == 0 and "fifo-status" in result.stdout, result.stderr


# ---- the CLI ----


@pytest.mark.parametrize("name", list(GARBAGE_STATUS))
def test_runs_and_status_verbs_survive_garbage_status(tmp_path, capsys, name):
    write_run(tmp_path, "good", '{"state": "done", "step": 5, "total_steps": 5}', [good_record(5)])
    run_dir = write_run(tmp_path, name, GARBAGE_STATUS[name], [good_record(1)])
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert name in out and "good" in out
    assert main(["status", str(run_dir)]) == 0
    assert name in capsys.readouterr().out


@pytest.mark.parametrize("name", list(GARBAGE_METRICS))
def test_runs_and_status_verbs_survive_garbage_metrics(tmp_path, capsys, name):
    run_dir = write_run(tmp_path, name, '{"state": "done", "step": 1}', [good_record(1), GARBAGE_METRICS[name]])
    assert main(["runs", str(tmp_path)]) == 0
    assert name in capsys.readouterr().out
    assert main(["status", str(run_dir)]) == 0
    assert name in capsys.readouterr().out


@pytest.mark.parametrize("name", ["list", "deep", "pid-text", "negative-pid", "not-utf8"])
def test_stop_on_garbage_status_is_one_line_and_signals_nothing(tmp_path, capsys, name):
    run_dir = write_run(tmp_path, name, GARBAGE_STATUS[name])
    assert main(["stop", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(run_dir) in err
    assert not (run_dir / "control" / "stop").exists()


# ---- the TUI ----


async def test_tui_stays_up_over_garbage_run_folders(tmp_path):
    runs_dir = tmp_path / "runs"
    names = []
    for name, status in (("status-list", "[]"), ("status-deep", DEEP), ("status-typed", GARBAGE_STATUS["all-wrong"]),
                         ("status-markup", GARBAGE_STATUS["markup"])):
        write_run(runs_dir, name, status, [good_record(1), GARBAGE_METRICS["all-text"], good_record(2)])
        names.append(name)
    bad_metrics = [good_record(1)] + list(GARBAGE_METRICS.values()) + [good_record(2)]
    status = json.dumps({"state": "running", "stage": "pretrain", "pid": os.getpid(), "heartbeat": 1e12,
                         "started": 1000.0, "step": 2, "total_steps": 10})
    write_run(runs_dir, "metrics-typed", status, bad_metrics)
    names.append("metrics-typed")
    # the Evals screen follows RUN-eval/metrics.jsonl for the progress of an eval of RUN
    write_run(runs_dir, "status-typed-eval", None, [GARBAGE_METRICS["progress-text"], GARBAGE_METRICS["markup"]])
    names.append("status-typed-eval")
    # checkpoints whose small JSON files are garbage: the Checkpoints and Evals screens read them
    checkpoints = runs_dir / "status-typed" / "checkpoints"
    for step, (meta, config, evals) in enumerate((
        (DEEP, '{"eval": 5, "sample": []}', '{"[/]": {"accuracy": "high"}, "arc": NaN}'),
        ('{"step": "abc", "tokens": "many", "val_bpb": "low", "stage": "[/]"}',
         '{"eval": {"tasks": 5, "limit": "all"}, "model": ' + "[" * 900 + "]" * 900 + "}",
         '{"gsm8k": ' + DEEP + "}"),
    ), start=1):
        folder = checkpoints / f"step_{step:06d}"
        folder.mkdir(parents=True)
        for file_name, text in (("meta.json", meta), ("config.json", config), ("evals.json", evals)):
            (folder / file_name).write_text(text, encoding="utf-8")
    app = PicochatApp(runs_dir)
    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        assert sorted(str(table.get_row_at(i)[0]) for i in range(table.row_count)) == sorted(names)
        for name in names:
            app.open_run(runs_dir / name)
            await pilot.pause()
            assert app.current_mode == "dashboard"
            await pilot.press("1")  # back to Runs, which re-reads every folder
            await pilot.pause()
        await pilot.press("p")  # pause the selected (garbage) run: a notice, not a crash
        await pilot.pause()
        await pilot.press("5")  # Checkpoints: both garbage checkpoints listed, two marked to diff configs
        await pilot.pause()
        assert app.screen.query_one(DataTable).row_count == 2
        await pilot.press("space", "down", "space", "r")
        await pilot.pause()
        for checkpoint in sorted(checkpoints.iterdir()):
            app.open_eval(checkpoint)
            await pilot.pause()
            assert app.current_mode == "evals"
        assert app.is_running
    shutil.rmtree(runs_dir)


def test_attach_lines_show_any_record_as_plain_text():
    from workbench.runs_cli import format_record

    assert format_record({}).plain.startswith("?")
    line = format_record({"kind": "event", "step": 3, "message": "[/] not markup", "t": 1.0})
    assert line.plain == "event    step=3  message=[/] not markup"
