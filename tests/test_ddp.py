"""Data parallel training on the CPU: 2 processes (torchrun, gloo) with the same global batch give
the loss curve of 1 process, and only rank 0 writes the run folder."""

import os
import subprocess
import sys

import pytest
import torch

from workbench import runs
from workbench.checkpoint import load_checkpoint
from workbench.train.pretrain import pretrain

pytestmark = pytest.mark.slow  # two extra torch processes: ~15 s on 2 cores


def test_two_gloo_processes_match_one(make_tiny_config):
    # 16 rows of 64 per step: 1 process = 2 micro-batches of 8, 2 processes = 8 rows each; 2 data
    # streams (each rank reads its own row groups), so the 1 process reads the same rows.
    train = {"steps": 4, "total_batch_tokens": 1024, "device_batch_size": 8, "eval_every": 4, "save_every": 1,
             "keep_last": 0, "data_streams": 2}
    single = make_tiny_config(train=train)
    pretrain(single, verbose=False)

    double = make_tiny_config(train=train)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "workbench.cli", "pretrain", str(double.base_dir / "config.toml")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    one = runs.read_metrics(single.out_dir, kind="train")
    two = runs.read_metrics(double.out_dir, kind="train")
    assert [r["step"] for r in two] == [1, 2, 3, 4]  # rank 0 alone logs
    assert two[-1]["tokens"] == one[-1]["tokens"] == 4 * 1024
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], abs=1e-6)
    # After one step the weights agree to float noise: the same 16 rows made the same gradient.
    # (Not the residual scalars: at init their gradient is ~0 plus rounding noise, and Adam's first
    # step turns the noise's sign into a full-size step, so later losses agree to ~1e-3 only.)
    after_one = [load_checkpoint(cfg.out_dir / "checkpoints" / "step_000001").model.state_dict()
                 for cfg in (single, double)]
    for name, tensor in after_one[0].items():
        if "lambdas" not in name:
            assert torch.allclose(tensor, after_one[1][name], atol=1e-4), name
    for a, b in zip(one[1:], two[1:], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
    sys_record = runs.read_metrics(double.out_dir, kind="sys")[0]
    assert sys_record["world_size"] == 2 and sys_record["grad_accum_steps"] == 1
    assert len(runs.list_checkpoints(double.out_dir)) == 4
    evals_one = runs.read_metrics(single.out_dir, kind="eval")
    evals_two = runs.read_metrics(double.out_dir, kind="eval")
    assert evals_two[-1]["val_bpb"] == pytest.approx(evals_one[-1]["val_bpb"], rel=1e-3)
