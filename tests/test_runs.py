"""The run-folder contract: what workers write is what readers see, even mid-write or after a crash."""

import json
import os
import subprocess
import sys
import time

from workbench import runs


def test_writer_and_readers(tmp_path):
    writer = runs.RunWriter(tmp_path / "r1", "pretrain", total_steps=10)
    writer.write_status(state="running")
    writer.log("train", step=1, loss=5.0, tokens_per_second=100.0)
    writer.log("train", step=2, loss=float("nan"))  # NaN must not break JSON readers
    writer.heartbeat(step=2, tokens=64)
    info = runs.run_info(tmp_path / "r1")
    assert info.state == "running" and info.stage == "pretrain" and info.step == 2 and info.tokens == 64
    assert info.loss is None  # the NaN record is the newest train record
    records = runs.read_metrics(tmp_path / "r1", kind="train")
    assert [r["loss"] for r in records] == [5.0, None]
    writer.finish("done")
    assert runs.effective_state(runs.read_status(tmp_path / "r1")) == "done"


def test_writer_as_context_manager_finishes_failed_with_one_line_and_unlocks(tmp_path):
    import pytest

    from workbench.errors import BadInput

    with pytest.raises(ValueError), runs.RunWriter(tmp_path / "r1", "sft", total_steps=3):
        raise ValueError("loss went sideways")
    status = runs.read_status(tmp_path / "r1")
    assert status["state"] == "failed" and status["message"] == "ValueError: loss went sideways"
    with pytest.raises(BadInput), runs.RunWriter(tmp_path / "r1", "sft") as writer:  # the lock was released
        raise BadInput("data.jsonl:3: not valid JSON")
    assert runs.read_status(tmp_path / "r1")["message"] == "data.jsonl:3: not valid JSON"
    with pytest.raises(KeyboardInterrupt), runs.RunWriter(tmp_path / "r1", "sft") as writer:
        writer.finish("stopped", "stopped at step 2")
        raise KeyboardInterrupt  # after finishing: the final status stays
    assert runs.read_status(tmp_path / "r1")["state"] == "stopped"
    with runs.RunWriter(tmp_path / "r1", "sft"):
        pass  # no error: the stage finishes it itself; the `with` adds nothing
    assert runs.read_status(tmp_path / "r1")["state"] == "starting"


def test_metrics_tail_reads_only_new_complete_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = runs.MetricsTail(path)
    assert tail.read() == []
    with open(path, "w") as handle:
        handle.write('{"kind": "train", "step": 1}\n{"kind": "tr')
    assert [r["step"] for r in tail.read()] == [1]
    with open(path, "a") as handle:
        handle.write('ain", "step": 2}\nnot json\n')
    assert [r["step"] for r in tail.read()] == [2]
    assert tail.bad_lines == 1
    path.write_text('{"kind": "train", "step": 9}\n')  # replaced by a shorter file: start over
    assert [r["step"] for r in tail.read()] == [9]


def test_crashed_and_stalled_states(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status = {"state": "running", "pid": dead.pid, "heartbeat": time.time()}
    assert runs.effective_state(status) == "crashed"
    alive = {"state": "running", "pid": os.getpid(), "heartbeat": time.time() - 10 * runs.STALL_SECONDS}
    assert runs.effective_state(alive) == "stalled"
    assert runs.effective_state(None) == "missing"


def test_control_files_are_consumed_in_order(tmp_path):
    writer = runs.RunWriter(tmp_path, "pretrain")
    runs.send_control(tmp_path, "pause")
    time.sleep(0.01)
    runs.send_control(tmp_path, "resume")
    assert writer.poll_control() == ["pause", "resume"]
    assert writer.poll_control() == []


def test_list_runs_skips_unrelated_folders_and_survives_corrupt_status(tmp_path):
    runs.RunWriter(tmp_path / "a", "prepare").finish("done")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "status.json").write_text("{corrupt")
    (tmp_path / "not-a-run").mkdir()
    names = {info.name: info.state for info in runs.list_runs(tmp_path)}
    assert names == {"a": "done", "b": "missing"}


def test_detached_worker_survives_parent_and_logs_to_file(tmp_path):
    log = tmp_path / "train.log"
    script = "import os, time; print('worker', os.getsid(0), flush=True); time.sleep(0.2)"
    pid = runs.spawn_detached([sys.executable, "-c", script], log)
    assert os.getsid(pid) == pid  # its own session: no SIGHUP when the terminal goes
    deadline = time.time() + 10
    while time.time() < deadline and "worker" not in log.read_text():
        time.sleep(0.05)
    assert f"worker {pid}" in log.read_text()


def test_status_json_is_always_complete(tmp_path):
    writer = runs.RunWriter(tmp_path, "pretrain")
    for step in range(50):
        writer.heartbeat(step=step)
        json.loads((tmp_path / "status.json").read_text())  # never half-written
    assert not list(tmp_path.glob(".*.tmp"))
