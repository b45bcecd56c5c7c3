"""The one training loop driven by a stage's own step function, inside the stage runner: what a
stage like GRPO gets from loop.train (records, checkpoint before evaluation, the NaN stop) and
from runner.StageRun (final status, "failed" with one line, the run folder's lock released)."""

import math

import pytest
import torch

from workbench import runs
from workbench.model import build_model
from workbench.optim import build_optimizer
from workbench.train.loop import StepOutcome, Steps, TrainState, clip_and_step, train
from workbench.train.runner import StageRun


def _stage(cfg, tokenizer, run: StageRun, losses=None) -> tuple[TrainState, Steps, list]:
    """A toy stage: each step trains the tiny model on random tokens through clip_and_step and
    reports its own stats and a sample; losses (step -> value) replace the reported loss."""
    torch.manual_seed(0)
    model = build_model(cfg.model, tokenizer.vocab_size)
    state = TrainState(stage="grpo", config=cfg, model=model, optimizers=build_optimizer(model, cfg.train),
                       tokenizer=tokenizer, run_dir=run.run_dir, device=torch.device("cpu"), total_steps=4)
    state.writer = run.open_writer(4, cfg)
    evaluated = []

    def step_fn(state: TrainState) -> StepOutcome:
        inputs = torch.randint(0, tokenizer.vocab_size, (2, 16))
        loss = model(inputs, inputs)
        loss.backward()
        grad_norm = clip_and_step(model, state.optimizers, cfg.train.grad_clip)
        reported = (losses or {}).get(state.step + 1, loss.detach())
        return StepOutcome(loss=reported, tokens=inputs.numel(), grad_norm=grad_norm,
                           stats={"reward_mean": state.step / 10}, sample=("Hi", f"reply {state.step}"))

    def val_fn(eval_model) -> dict[str, float]:
        evaluated.append((state.step, [p.name for p in runs.list_checkpoints(run.run_dir)]))
        return {"score": 0.5}

    return state, Steps(step_fn, val_fn=val_fn, eval_every=2, save_every=2, sample_every=0), evaluated


def test_a_stage_step_function_runs_through_the_loop(make_tiny_config, tiny_tokenizer):
    cfg = make_tiny_config(train={"steps": 4})
    with StageRun(cfg, "grpo") as run:
        state, steps, evaluated = _stage(cfg, tiny_tokenizer, run)
        result = train(state, steps)
        run.finish(result, "4 toy steps")
    assert result.step == 4 and not result.stopped and result.tokens == 4 * 32
    assert evaluated == [(0, []), (2, ["step_000002"]), (4, ["step_000002", "step_000004"])]  # saved first
    own = runs.read_metrics(run.run_dir, kind="grpo")
    assert [r["step"] for r in own] == [1, 2, 3, 4] and [r["reward_mean"] for r in own] == [0.0, 0.1, 0.2, 0.3]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["lr"] > 0 for r in own)  # the train fields
    assert [r["text"] for r in runs.read_metrics(run.run_dir, kind="sample")] == [f"reply {s}" for s in range(4)]
    assert [r["step"] for r in runs.read_metrics(run.run_dir, kind="eval")] == [0, 2, 4]
    status = runs.read_status(run.run_dir)
    assert status["state"] == "done" and status["message"] == "4 toy steps"


def test_a_diverging_stage_finishes_failed_with_one_line_and_frees_the_folder(make_tiny_config, tiny_tokenizer):
    cfg = make_tiny_config(train={"steps": 4})
    with pytest.raises(FloatingPointError), StageRun(cfg, "grpo") as run:
        state, steps, _ = _stage(cfg, tiny_tokenizer, run, losses={3: float("nan")})
        train(state, steps)
    status = runs.read_status(run.run_dir)
    assert status["state"] == "failed" and status["step"] == 3
    assert status["message"].startswith("FloatingPointError: loss is nan at step 3") and "\n" not in status["message"]
    assert [p.name for p in runs.list_checkpoints(run.run_dir)] == ["step_000002"]  # nothing saved is lost
    runs.RunWriter(run.run_dir, "grpo").finish("done")  # the lock went with the failed stage
