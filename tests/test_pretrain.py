"""Pretraining end to end on the CPU: the real loop, real data, real checkpoints.

The headline property: a run stopped and resumed continues the uninterrupted loss curve exactly.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from workbench import runs
from workbench.checkpoint import load_checkpoint
from workbench.cli import main
from workbench.errors import BadInput
from workbench.train.pretrain import pretrain


def train_losses(run_dir):
    return {r["step"]: r["loss"] for r in runs.read_metrics(run_dir, kind="train")}


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_fixture_run_learns(tiny_checkpoint):
    """Through the real loop: loss at init ~ ln(vocab), then val bpb falls; the records the
    dashboard reads are all there."""
    run_dir = tiny_checkpoint.parent.parent
    train = runs.read_metrics(run_dir, kind="train")
    assert [r["step"] for r in train] == list(range(1, 41))
    assert abs(train[0]["loss"] - math.log(512)) < 0.3
    assert train[-1]["loss"] < train[0]["loss"] - 1.0
    for field in ("loss", "lr", "grad_norm", "tokens", "tokens_per_second", "mfu", "step_seconds"):
        assert train[-1][field] is not None, field
    assert train[-1]["tokens"] == 40 * 512
    evals = runs.read_metrics(run_dir, kind="eval")
    assert [r["step"] for r in evals] == [0, 20, 40]
    assert evals[-1]["val_bpb"] < evals[0]["val_bpb"] - 0.5
    assert runs.read_metrics(run_dir, kind="sys")[0]["params"] > 0
    assert len(runs.read_metrics(run_dir, kind="sample")) == 3
    status = runs.read_status(run_dir)
    assert status["state"] == "done" and status["step"] == 40
    assert status["best_val_bpb"] == pytest.approx(evals[-1]["val_bpb"])
    meta = json.loads((tiny_checkpoint / "meta.json").read_text())
    assert meta["val_bpb"] == pytest.approx(evals[-1]["val_bpb"])  # filled in after the save
    assert (run_dir / "config.toml").exists()


def test_resume_equals_uninterrupted(make_tiny_config):
    """Stop after step 6 (keep only that checkpoint), resume: steps 7..12 are bit-identical."""
    overrides = {"train": {"steps": 12, "save_every": 6, "eval_every": 6, "keep_last": 0, "warmup_steps": 2}}
    full_cfg = make_tiny_config(**overrides)
    pretrain(full_cfg, verbose=False)
    full = train_losses(full_cfg.out_dir)

    cut_cfg = make_tiny_config(**overrides)
    shutil.copytree(full_cfg.out_dir / "checkpoints" / "step_000006",
                    cut_cfg.out_dir / "checkpoints" / "step_000006")
    result = pretrain(cut_cfg, resume=True, verbose=False)
    assert result.step == 12 and not result.stopped
    resumed = train_losses(cut_cfg.out_dir)
    assert sorted(resumed) == list(range(7, 13))
    for step in range(7, 13):
        assert resumed[step] == full[step], f"step {step}: {resumed[step]} != {full[step]}"
    a = load_checkpoint(full_cfg.out_dir).model.state_dict()
    b = load_checkpoint(cut_cfg.out_dir).model.state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_existing_run_needs_resume(tiny_config, tiny_config_path, tiny_checkpoint, capsys):
    with pytest.raises(BadInput, match="--resume"):
        pretrain(tiny_config, verbose=False)
    assert main(["pretrain", str(tiny_config_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "already has checkpoints" in err


def test_resume_of_a_finished_run_trains_nothing(make_tiny_config):
    cfg = make_tiny_config(train={"steps": 3, "eval_every": 3, "save_every": 3})
    pretrain(cfg, verbose=False)
    before = train_losses(cfg.out_dir)
    result = pretrain(cfg, resume=True, verbose=False)
    assert result.step == 3 and train_losses(cfg.out_dir) == before
    status = json.loads((cfg.out_dir / "status.json").read_text())
    assert status["step"] == 3 and status["state"] == "done"  # the finished run's status is left alone


def test_missing_inputs_name_the_command_to_run(make_tiny_config, tmp_path, capsys):
    cfg = make_tiny_config(data={"dir": str(tmp_path / "no-data")})
    with pytest.raises(BadInput, match="picochat prepare"):
        pretrain(cfg, verbose=False)
    cfg = make_tiny_config(tokenizer={"path": str(tmp_path / "no-tokenizer.json")})
    with pytest.raises(BadInput, match="picochat tokenizer"):
        pretrain(cfg, verbose=False)
    config_path = cfg.base_dir / "config.toml"
    assert main(["pretrain", str(config_path)]) == 2
    assert "picochat tokenizer" in capsys.readouterr().err


def test_changed_model_on_resume_is_refused(make_tiny_config):
    cfg = make_tiny_config(train={"steps": 2, "eval_every": 2, "save_every": 2})
    pretrain(cfg, verbose=False)
    cfg.model.width = 128
    with pytest.raises(BadInput, match=r"\[model\] differs"):
        pretrain(cfg, resume=True, verbose=False)


def test_gradient_accumulation_matches_one_big_batch(make_tiny_config):
    """2 micro-batches of 8 rows == 1 batch of 16 rows (same rows, same step). Identical at the
    first step; later steps drift by float summation order only (Adam's tiny eps amplifies it)."""
    big = make_tiny_config(train={"steps": 3, "total_batch_tokens": 1024, "device_batch_size": 16,
                                  "eval_every": 3, "save_every": 3})
    accumulated = make_tiny_config(train={"steps": 3, "total_batch_tokens": 1024, "device_batch_size": 8,
                                          "eval_every": 3, "save_every": 3})
    pretrain(big, verbose=False)
    pretrain(accumulated, verbose=False)
    a, b = train_losses(big.out_dir), train_losses(accumulated.out_dir)
    assert a[1] == pytest.approx(b[1], abs=1e-6)
    for step in (2, 3):
        assert a[step] == pytest.approx(b[step], abs=1e-3)


def test_eval_failure_never_kills_training_and_saves_come_first(make_tiny_config, tiny_tokenizer):
    """The loop calls val_fn after the checkpoint of that step exists; a crashing val_fn becomes
    an event and training goes on to the end."""
    from workbench.model import build_model
    from workbench.optim import build_optimizer
    from workbench.runs import RunWriter
    from workbench.train.loader import PackingLoader
    from workbench.train.loop import MicroBatchStep, Steps, TrainState, train

    cfg = make_tiny_config(train={"steps": 4, "eval_every": 2, "save_every": 2})
    model = build_model(cfg.model, tiny_tokenizer.vocab_size)
    loader = PackingLoader(cfg.data_dir, "train", tiny_tokenizer, 64, 8)
    seen = []

    def failing_val(eval_model):
        status = runs.read_status(cfg.out_dir)
        seen.append((status["step"], [p.name for p in runs.list_checkpoints(cfg.out_dir)]))
        raise RuntimeError("out of memory (simulated)")

    writer = RunWriter(cfg.out_dir, "pretrain", total_steps=4)
    state = TrainState(stage="pretrain", config=cfg, model=model, optimizers=build_optimizer(model, cfg.train),
                       tokenizer=tiny_tokenizer, run_dir=cfg.out_dir, device=torch.device("cpu"), writer=writer,
                       total_steps=4)
    result = train(state, Steps(MicroBatchStep(state, iter(loader), grad_accum_steps=1), val_fn=failing_val,
                                eval_at_start=False))
    loader.close()
    assert result.step == 4 and not result.stopped
    assert seen == [(2, ["step_000002"]), (4, ["step_000002", "step_000004"])]
    events = [r["message"] for r in runs.read_metrics(cfg.out_dir, kind="event")]
    assert sum("evaluation failed at step" in message for message in events) == 2


def _worker_env():
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_control_files_pause_resume_stop_detached(make_tiny_config):
    """A detached worker obeys pause, resume and stop at step boundaries; stop checkpoints and
    exits 0, and --resume continues from that checkpoint."""
    cfg = make_tiny_config(train={"steps": 100_000, "eval_every": 100_000, "save_every": 100_000})
    config_path = cfg.base_dir / "config.toml"
    launcher = subprocess.run(runs.picochat_command("pretrain", str(config_path), "--detach"),
                              capture_output=True, text=True, env=_worker_env(), timeout=120)
    assert launcher.returncode == 0, launcher.stderr
    assert "train.log" in launcher.stdout
    run_dir = cfg.out_dir
    status = wait_for(lambda: (s := runs.read_status(run_dir)) and s.get("step", 0) >= 3 and s, what="step 3")
    pid = status["pid"]
    try:
        runs.send_control(run_dir, "pause")
        wait_for(lambda: runs.read_status(run_dir)["state"] == "paused", what="paused")
        paused_at = runs.read_status(run_dir)["step"]
        time.sleep(0.6)
        assert runs.read_status(run_dir)["step"] == paused_at
        assert runs.effective_state(runs.read_status(run_dir)) == "paused"
        runs.send_control(run_dir, "resume")
        wait_for(lambda: runs.read_status(run_dir)["step"] > paused_at, what="training again")
        runs.send_control(run_dir, "stop")
        wait_for(lambda: not runs.pid_alive(pid), what="the worker to exit")
    finally:
        if runs.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    status = runs.read_status(run_dir)
    assert status["state"] == "stopped" and "stopped at step" in status["message"]  # stopped is its own state
    newest = runs.list_checkpoints(run_dir)[-1]
    assert json.loads((newest / "meta.json").read_text())["step"] == status["step"]
    assert "Traceback" not in (run_dir / "train.log").read_text()


def test_sigterm_finishes_the_step_and_checkpoints(make_tiny_config):
    cfg = make_tiny_config(train={"steps": 100_000, "eval_every": 100_000, "save_every": 100_000})
    config_path = cfg.base_dir / "config.toml"
    process = subprocess.Popen(runs.picochat_command("pretrain", str(config_path)), env=_worker_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (s := runs.read_status(cfg.out_dir)) and s.get("step", 0) >= 2, what="step 2")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "--resume" in output
    step = runs.read_status(cfg.out_dir)["step"]
    assert load_checkpoint(cfg.out_dir).step == step


def test_bits_per_byte_counts_only_real_bytes(tiny_checkpoint):
    """bpb = nats over targets with bytes / (ln 2 * their bytes): special targets (<|bos|>) and
    ignored ones (-1) count in neither sum."""
    from workbench.evals.bpb import evaluate_bpb

    loaded = load_checkpoint(tiny_checkpoint)
    tokenizer = loaded.tokenizer
    ids = tokenizer.encode("First Citizen:\nBefore we proceed any further, hear me speak.", bos=True)
    row = torch.tensor([ids + ids])  # two documents: the second <|bos|> is a target
    inputs, targets = row[:, :-1], row[:, 1:].clone()
    targets[0, 3] = -1
    losses = loaded.model(inputs, targets.clamp(min=0), loss_reduction="none")[0]
    table = tokenizer.token_bytes()
    counted = [i for i, t in enumerate(targets[0].tolist()) if t >= 0 and table[t] > 0]
    assert len(counted) == targets.numel() - 2  # the -1 and the <|bos|> target are left out
    expected = sum(losses[i].item() for i in counted) / (math.log(2) * sum(table[targets[0, i]] for i in counted))
    assert evaluate_bpb(loaded.model, tokenizer, [(inputs, targets)]) == pytest.approx(expected, rel=1e-6)


def test_bpb_for_checkpoint_matches_the_runs_own_eval(tiny_checkpoint):
    from workbench.evals.bpb import bpb_for_checkpoint

    meta = json.loads((tiny_checkpoint / "meta.json").read_text())
    assert bpb_for_checkpoint(tiny_checkpoint, device="cpu") == pytest.approx(meta["val_bpb"], rel=1e-6)
    assert bpb_for_checkpoint(tiny_checkpoint.parent.parent, max_tokens=512, device="cpu") > 0


def test_a_running_worker_is_not_started_twice(make_tiny_config):
    cfg = make_tiny_config()
    writer = runs.RunWriter(cfg.out_dir, "pretrain", total_steps=40)  # this process plays the worker
    writer.write_status(state="running")
    with pytest.raises(BadInput, match="already running"):
        pretrain(cfg, verbose=False)
    writer.finish("done")


def test_bfloat16_autocast_trains(make_tiny_config):
    """[train] dtype = "bfloat16" (autocast; what CUDA gets by default) runs through the loop."""
    cfg = make_tiny_config(train={"steps": 3, "eval_every": 3, "save_every": 3, "dtype": "bfloat16"})
    result = pretrain(cfg, verbose=False)
    assert result.step == 3 and math.isfinite(result.last_loss)
    assert runs.read_metrics(cfg.out_dir, kind="sys")[0]["dtype"] == "bfloat16"
    assert math.isfinite(runs.read_metrics(cfg.out_dir, kind="eval")[-1]["val_bpb"])


def fake_clock(monkeypatch, seconds_per_call: float) -> None:
    """The budget's clock, advancing a fixed amount per reading: the steps it picks are exact."""
    from workbench.train import loop

    now = [0.0]

    def tick() -> float:
        now[0] += seconds_per_call
        return now[0]

    monkeypatch.setattr(loop.TimeBudget, "clock", staticmethod(tick))


def test_time_budget_fixes_the_steps_once_and_resume_keeps_them(make_tiny_config, monkeypatch):
    from workbench.optim import lr_multiplier

    overrides = {"train": {"time_budget": "40s", "steps": 5, "save_every": 10, "eval_every": 10, "keep_last": 0,
                           "warmup_steps": 2}}
    full_cfg = make_tiny_config(**overrides)
    fake_clock(monkeypatch, 1.0)
    result = pretrain(full_cfg, verbose=False)
    total = result.step
    assert 12 < total < 40 and total != 5  # chosen from the speed, not [train] steps
    status = runs.read_status(full_cfg.out_dir)
    assert status["total_steps"] == total and status["state"] == "done"
    events = [r["message"] for r in runs.read_metrics(full_cfg.out_dir, kind="event")]
    assert sum(message.startswith("time budget 40s") for message in events) == 1
    train = runs.read_metrics(full_cfg.out_dir, kind="train")
    # the whole schedule, warmdown included, is the one for `total` steps
    assert [r["lr_multiplier"] for r in train] == [lr_multiplier(s, total, full_cfg.train) for s in range(total)]
    meta = json.loads((result.last_checkpoint / "meta.json").read_text())
    assert meta["total_steps"] == total and meta["time_budget"] == 40.0

    cut_cfg = make_tiny_config(**overrides)
    shutil.copytree(full_cfg.out_dir / "checkpoints" / "step_000010", cut_cfg.out_dir / "checkpoints" / "step_000010")
    fake_clock(monkeypatch, 3.0)  # a slower machine now: measuring again would pick other steps
    resumed = pretrain(cut_cfg, resume=True, verbose=False)
    assert resumed.step == total
    assert runs.read_status(cut_cfg.out_dir)["total_steps"] == total
    meta = json.loads((resumed.last_checkpoint / "meta.json").read_text())
    assert meta["total_steps"] == total and meta["time_budget"] == 40.0  # a second resume keeps them too
    full, again = train_losses(full_cfg.out_dir), train_losses(cut_cfg.out_dir)
    assert sorted(again) == list(range(11, total + 1))
    assert all(again[step] == full[step] for step in again)


def test_bad_budget_flag_is_one_line(tiny_config_path, capsys):
    assert main(["pretrain", str(tiny_config_path), "--budget", "soon"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--budget" in err and "'soon'" in err


def test_mfu_never_tops_100_percent_when_the_peak_was_measured_low(make_tiny_config, monkeypatch):
    # The CPU peak is measured at start-up; on a busy machine (or in fp32 for a bf16 run) it came out
    # below what training steps reach, and the dashboard plotted MFU 201%. Here the measurement says
    # 1 kFLOP/s: the best rate a step reaches must take its place.
    from workbench.train import loop

    monkeypatch.setattr(loop, "peak_flops", lambda *args, **kwargs: 1e3)
    cfg = make_tiny_config(train={"steps": 4, "eval_every": 4, "save_every": 4})
    pretrain(cfg, verbose=False)
    mfu = [r["mfu"] for r in runs.read_metrics(cfg.out_dir, kind="train")]
    assert len(mfu) == 4 and all(0 < value <= 100 for value in mfu), mfu
    assert mfu[0] == 100  # the first step is the best seen so far
