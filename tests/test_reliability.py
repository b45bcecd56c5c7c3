"""Workers and checkpoints survive garbage and faults (issue 16): a damaged meta.json, odd things in
control/, a pid that is no longer the worker's, a second worker on the same run folder, a kill
between two renames, a torn metrics line, a full disk and NaN weights. Each case ends in one line
and exit 2 (or is repaired), never a traceback, never a silent fall-back that loses work."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from workbench import runs
from workbench.checkpoint import load_checkpoint, save_checkpoint
from workbench.cli import main
from workbench.errors import BadInput
from workbench.train.pretrain import pretrain


@pytest.fixture(scope="module")
def trained_run(make_tiny_config):
    """A real 4-step pretraining run with checkpoints at steps 2 and 4 (read-only: copy it)."""
    cfg = make_tiny_config(train={"steps": 4, "save_every": 2, "eval_every": 100, "sample_every": 0})
    pretrain(cfg, verbose=False)
    assert [p.name for p in runs.list_checkpoints(cfg.out_dir)] == ["step_000002", "step_000004"]
    return cfg.out_dir


@pytest.fixture
def resumable(make_tiny_config, trained_run):
    """A fresh config for 6 steps whose run folder holds a copy of trained_run."""
    cfg = make_tiny_config(train={"steps": 6, "save_every": 2, "eval_every": 100, "sample_every": 0})
    shutil.copytree(trained_run, cfg.out_dir)
    (cfg.out_dir / ".lock").unlink(missing_ok=True)
    return cfg


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def edit_meta(checkpoint, **changes):
    path = checkpoint / "meta.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


# ---------------------------------------------------------------------------------------------
# 9: meta.json is validated when a checkpoint loads


@pytest.mark.parametrize("meta, with_optimizer, field", [
    ({}, True, "step"),  # resume needs the step
    ({"step": "abc"}, False, "step"),  # eval and chat read it too
    ({"step": 4, "tokens": -1}, False, "tokens"),
    ({"step": 4, "rng_states": "garbage"}, True, "rng_states"),
    ({"step": 4, "rng_states": {"torch_cpu": "AAAA"}}, True, "rng_states"),
    ({"step": 4, "rng_states": {"python": "bm90IGpzb24="}}, True, "rng_states"),
    ({"step": 4, "loader_state": [1, 2]}, True, "loader_state"),
    ({"step": 4, "format_version": 99}, False, "format_version"),
    ([], False, "JSON object"),
])
def test_garbage_meta_json_is_one_line_naming_the_field(trained_run, tmp_path, meta, with_optimizer, field):
    checkpoint = tmp_path / "step_000004"
    shutil.copytree(trained_run / "checkpoints" / "step_000004", checkpoint)
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BadInput) as caught:
        load_checkpoint(checkpoint, with_optimizer=with_optimizer)
    message = str(caught.value)
    assert str(checkpoint / "meta.json") in message and field in message and "\n" not in message


def test_resume_with_garbage_meta_exits_2_in_one_line(resumable, capsys):
    newest = resumable.out_dir / "checkpoints" / "step_000004"
    edit_meta(newest, step="abc")
    assert main(["pretrain", str(resumable.base_dir / "config.toml"), "--resume"]) == 2
    assert "meta.json: step" in one_line_error(capsys)
    (newest / "meta.json").write_text("{}")
    assert main(["pretrain", str(resumable.base_dir / "config.toml"), "--resume"]) == 2
    assert "meta.json: step" in one_line_error(capsys)
    assert [p.name for p in runs.list_checkpoints(resumable.out_dir)] == ["step_000002", "step_000004"]


def test_resume_never_falls_back_past_a_newest_checkpoint_without_meta(resumable):
    newest = resumable.out_dir / "checkpoints" / "step_000004"
    (newest / "meta.json").unlink()
    with pytest.raises(BadInput, match=r"step_000004: .*no meta\.json.*delete it"):
        pretrain(resumable, resume=True, verbose=False)
    (newest / "model.safetensors").unlink()
    with pytest.raises(BadInput, match=r"step_000004: incomplete checkpoint \(missing model\.safetensors"):
        pretrain(resumable, resume=True, verbose=False)
    assert not (newest / "meta.json").exists()  # nothing overwritten
    shutil.rmtree(newest)  # what the message tells the user to do
    assert pretrain(resumable, resume=True, verbose=False).step == 6


def test_a_fresh_start_never_overwrites_a_checkpoint_without_meta(resumable):
    shutil.rmtree(resumable.out_dir / "checkpoints" / "step_000002")
    (resumable.out_dir / "checkpoints" / "step_000004" / "meta.json").unlink()
    with pytest.raises(BadInput, match=r"step_000004"):
        pretrain(resumable, verbose=False)


# ---------------------------------------------------------------------------------------------
# 11: control/ holding anything never kills the worker; stale commands die with the old worker


def test_a_folder_named_pause_is_removed_with_one_event(tmp_path):
    writer = runs.RunWriter(tmp_path, "pretrain")
    (tmp_path / "control" / "pause").mkdir()
    (tmp_path / "control" / "pause" / "inside").write_text("x")
    (tmp_path / "control" / "stop").symlink_to(tmp_path / "nowhere")
    assert writer.poll_control() == []
    assert writer.poll_control() == []
    assert not (tmp_path / "control" / "pause").exists() and not (tmp_path / "control" / "stop").is_symlink()
    events = [r["message"] for r in runs.read_metrics(tmp_path, kind="event")]
    assert sum("control" in message for message in events) == 2, events  # one per odd entry
    runs.send_control(tmp_path, "pause")
    assert writer.poll_control() == ["pause"]


def test_control_being_a_file_is_replaced_by_a_folder(tmp_path):
    writer = runs.RunWriter(tmp_path, "pretrain")
    shutil.rmtree(tmp_path / "control")
    (tmp_path / "control").write_text("not a folder")
    assert writer.poll_control() == []
    assert (tmp_path / "control").is_dir()
    runs.send_control(tmp_path, "stop")
    assert writer.poll_control() == ["stop"]
    (tmp_path / "control").rmdir()
    (tmp_path / "control").write_text("again")
    runs.send_control(tmp_path, "save")  # the sender repairs it too
    assert writer.poll_control() == ["save"]


def test_stale_control_files_are_cleared_when_a_worker_starts(tmp_path):
    runs.RunWriter(tmp_path, "pretrain").finish("done")
    runs.send_control(tmp_path, "pause")  # left over: the worker it was meant for has gone
    (tmp_path / "control" / "stop").mkdir()
    writer = runs.RunWriter(tmp_path, "pretrain")
    assert writer.poll_control() == []
    assert list((tmp_path / "control").iterdir()) == []


def test_a_resumed_run_is_not_paused_by_a_stale_pause(resumable):
    runs.send_control(resumable.out_dir, "pause")
    rescue = threading.Timer(30, runs.send_control, (resumable.out_dir, "stop"))  # a regression fails, not hangs
    rescue.start()
    try:
        result = pretrain(resumable, resume=True, verbose=False)
    finally:
        rescue.cancel()
    assert result.step == 6 and not result.stopped


# ---------------------------------------------------------------------------------------------
# 12: stop signals only the run's own worker


def _status_naming(run_dir, pid):
    """status.json of a live-looking worker whose pid is now someone else's."""
    writer = runs.RunWriter(run_dir, "pretrain", total_steps=10)
    writer.write_status(state="running", pid=pid)


def test_stop_never_signals_an_unrelated_process(tmp_path):
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        _status_naming(tmp_path, bystander.pid)
        assert runs.effective_state(runs.read_status(tmp_path)) == "running"
        runs.stop_run(tmp_path, grace_seconds=0.3)
        time.sleep(0.2)
        assert bystander.poll() is None, "stop killed a process that is not the run's worker"
        assert (tmp_path / "control" / "stop").exists()  # the stop file is still there for the worker
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_signals_the_runs_own_worker_after_the_grace(tmp_path):
    """A real worker busy outside its step loop (it never polls control/) gets SIGTERM."""
    script = textwrap.dedent(f"""
        import time
        from workbench import runs
        writer = runs.RunWriter({str(tmp_path)!r}, "pretrain", total_steps=10)
        writer.write_status(state="running")
        print("ready", flush=True)
        time.sleep(60)
    """)
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "ready"
        runs.stop_run(tmp_path, grace_seconds=0.3)
        assert worker.wait(timeout=10) == -signal.SIGTERM
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


# ---------------------------------------------------------------------------------------------
# 15: one worker per run folder


def test_a_second_worker_is_refused_by_the_run_folder_lock(make_tiny_config):
    """Two real processes. The first holds the run folder (its status.json not yet visible, as
    when both started within the same moment); the second exits 2 with one line and writes
    nothing. kill -9 of the first frees the folder."""
    cfg = make_tiny_config(train={"steps": 2, "save_every": 2, "eval_every": 100, "sample_every": 0})
    holder_script = textwrap.dedent(f"""
        import os, time
        from workbench import runs
        runs.RunWriter({str(cfg.out_dir)!r}, "pretrain")
        os.unlink({str(cfg.out_dir / "status.json")!r})
        print("ready", flush=True)
        time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", holder_script], stdout=subprocess.PIPE, text=True)
    command = runs.picochat_command("pretrain", str(cfg.base_dir / "config.toml"))
    try:
        assert holder.stdout.readline().strip() == "ready"
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "already running" in lines[0] and f"pid {holder.pid}" in lines[0], lines
        assert not (cfg.out_dir / "checkpoints").exists() and not (cfg.out_dir / "status.json").exists()
        assert runs.read_metrics(cfg.out_dir, kind="sys") == []
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    runs.lock_run_folder(cfg.out_dir, hold=False)  # free again: the OS released it with the process


# ---------------------------------------------------------------------------------------------
# smaller: interrupted re-save, torn metrics line, full disk, NaN weights


def test_a_resave_killed_between_its_renames_is_recovered_on_the_next_start(resumable):
    folder = resumable.out_dir / "checkpoints"
    shutil.copytree(folder / "step_000004", folder / ".tmp-step_000004")  # the new copy, complete
    os.replace(folder / "step_000004", folder / ".tmp-old-step_000004")  # the kill came here
    result = pretrain(resumable, resume=True, verbose=False)
    assert result.step == 6
    assert [r["step"] for r in runs.read_metrics(resumable.out_dir, kind="train")] == [1, 2, 3, 4, 5, 6]
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_resume_terminates_a_torn_metrics_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n{"kind": "train", "st')
    writer = runs.RunWriter(tmp_path, "pretrain")
    writer.log("train", step=2, loss=1.0)
    assert [r["step"] for r in runs.read_metrics(tmp_path, kind="train")] == [1, 2]


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(trained_run, tmp_path, monkeypatch):
    import safetensors.torch

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run_dir / "checkpoints")
    loaded = load_checkpoint(run_dir)
    real_save = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as handle:
            handle.truncate(100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    for step in (4, 6):  # a re-save of the newest step, and a new one
        with pytest.raises(BadInput, match=r"No space left on device") as caught:
            save_checkpoint(run_dir, step, loaded.model, loaded.config, loaded.tokenizer)
        assert "\n" not in str(caught.value)
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    monkeypatch.undo()
    assert load_checkpoint(run_dir, with_optimizer=True).step == 4


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1.5 MB tmpfs (root only): room for about one checkpoint of the tiny model."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount_point)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_ends_training_in_one_line(make_tiny_config, small_tmpfs, capsys):
    cfg = make_tiny_config(run={"out_dir": str(small_tmpfs / "run")},
                           train={"steps": 6, "save_every": 2, "eval_every": 100, "sample_every": 0,
                                  "keep_last": 0})
    assert main(["pretrain", str(cfg.base_dir / "config.toml")]) == 2
    assert "No space left on device" in one_line_error(capsys)
    saved = runs.list_checkpoints(cfg.out_dir)
    assert saved, "the first checkpoint should have fit"
    load_checkpoint(saved[-1], with_optimizer=True)
    assert not [p.name for p in (cfg.out_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def test_a_full_disk_under_the_run_writer_is_one_line(small_tmpfs):
    writer = runs.RunWriter(small_tmpfs / "run", "pretrain")
    filler = os.open(small_tmpfs / "filler", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError):
        while True:
            os.write(filler, b"x" * 65536)
    os.close(filler)
    with pytest.raises(BadInput, match=r"metrics\.jsonl: cannot write \(No space left on device\)"):
        for _ in range(100):
            writer.log("sample", text="x" * 8192)
    writer.finish("failed", "disk full")  # a failing worker's last words are best effort: no second error
    assert not list((small_tmpfs / "run").glob(".*.tmp"))


def test_non_finite_weights_are_refused_at_load(trained_run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    checkpoint = tmp_path / "step_000004"
    shutil.copytree(trained_run / "checkpoints" / "step_000004", checkpoint)
    tensors = load_file(str(checkpoint / "model.safetensors"))
    name = sorted(tensors)[-1]
    tensors[name][0] = float("nan")
    save_file(tensors, str(checkpoint / "model.safetensors"))
    with pytest.raises(BadInput, match=rf"model\.safetensors: non-finite weights in {name}"):
        load_checkpoint(checkpoint)
    assert main(["chat", str(checkpoint), "-p", "hello"]) == 2
    assert "non-finite weights" in one_line_error(capsys)

    shutil.copy(trained_run / "checkpoints" / "step_000004" / "model.safetensors", checkpoint)
    optimizer = load_file(str(checkpoint / "optimizer.safetensors"))
    name = next(key for key, value in sorted(optimizer.items()) if value.is_floating_point() and value.numel())
    optimizer[name].view(-1)[0] = float("inf")
    save_file(optimizer, str(checkpoint / "optimizer.safetensors"))
    load_checkpoint(checkpoint)  # inference does not need the optimizer
    with pytest.raises(BadInput, match=rf"optimizer\.safetensors: non-finite values in {name}"):
        load_checkpoint(checkpoint, with_optimizer=True)
