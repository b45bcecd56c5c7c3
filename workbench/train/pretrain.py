"""`picochat pretrain CONFIG [--resume] [--detach]`: train the GPT on the prepared shards.

Reads [run], [model] and [train]; needs `picochat prepare` and `picochat tokenizer` done first.
Writes the run folder (runs/NAME): config.toml, status.json, metrics.jsonl, checkpoints/.

- A run folder that already has checkpoints is never overwritten: start it again with --resume
  (model, optimizer, data position, RNG and step all come back, so on the CPU the resumed loss
  curve is the uninterrupted one, step for step), or pick another [run] name / out_dir.
- --detach starts the same command as a background worker (output in RUN/train.log) and returns.
- Under torchrun (WORLD_SIZE > 1) every rank reads, tokenizes and trains on its own data streams
  (workbench/train/loader.py) with DDP, or with FSDP2 when [train] distributed = "fsdp" (gloo on
  the CPU, nccl on CUDA); evaluation is split among the ranks. Only rank 0 writes the run folder;
  rank 0 decides which checkpoint a --resume starts from and every rank must be able to read it
  (multi-node: a shared file system), and all ranks check they start at the same step.
  Checkpoints are the same files in every mode: an FSDP run gathers whole tensors to save them.

What is pretraining's own: the data and tokenizer checks, building (or FSDP-sharding) the model,
the packing loader whose position rides in every checkpoint, and bits per byte on the val split.
The run folder, flags and resume plumbing are runner.py's; the loop and its micro-batch step
(loop.MicroBatchStep) are loop.py's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from workbench import stages
from workbench.errors import BadInput
from workbench.train import runner


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runner.add_arguments(parser, reads="[run], [model] and [train]", folder="RUN", resume_from="the run folder",
                         budget_help="train for this wall-clock time (e.g. 10m; overrides [train] time_budget "
                                     "and steps)")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from workbench import config as config_module

    cfg = config_module.load(args.config)
    if runner.check_budget(args.budget):
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, time_budget=args.budget))
    return runner.launch(args, "pretrain", stages.run_dir(cfg, "pretrain"), check=lambda: check_inputs(cfg, args.resume),
                         train=lambda: pretrain(cfg, resume=args.resume))


def check_inputs(cfg, resume: bool, is_main: bool = True, worker: bool = False):
    """Everything that can be wrong before training starts, as BadInput: data and tokenizer
    missing, a run folder that would be overwritten, a run that is already going (runner.guard;
    the worker, not the launcher of a detached one, takes the run folder's lock).
    Returns (tokenizer, newest checkpoint folder or None)."""
    from workbench.data.shards import list_shards
    from workbench.tokenizer import Tokenizer

    if not list_shards(cfg.data_dir, "train"):
        raise BadInput(f"{cfg.data_dir}: no prepared training data; run `picochat prepare CONFIG` first")
    if not Path(cfg.tokenizer_path).exists():
        raise BadInput(f"{cfg.tokenizer_path}: no tokenizer; run `picochat tokenizer CONFIG` first")
    tokenizer = Tokenizer.from_file(cfg.tokenizer_path)
    return tokenizer, runner.guard(cfg, "pretrain", resume, worker=worker, is_main=is_main)


def pretrain(cfg, resume: bool = False, verbose: bool = True):
    """Pretrain per the config; returns loop.TrainResult. In-process entry point for tests,
    speedrun and the CLI."""
    from workbench.train.common import cleanup_distributed, setup_distributed

    dist = setup_distributed(cfg.run.device, cfg.train.distributed, cfg.train.dist_timeout)
    try:
        with runner.StageRun(cfg, "pretrain", dist) as stage_run:
            return _pretrain(cfg, resume, dist, verbose, stage_run)
    finally:
        cleanup_distributed(dist)


def _newest_everywhere(newest, dist, broadcast_from_main):
    """Rank 0's choice of checkpoint to resume from, on every rank: each node resolving its own
    newest one would start some ranks from another step (or from scratch) on a node that lacks it."""
    chosen = broadcast_from_main(None if newest is None else str(newest), dist)
    if chosen is None:
        return None
    if not (Path(chosen) / "meta.json").exists():
        raise BadInput(f"{chosen}: rank {dist.rank} cannot read the checkpoint rank 0 resumes from; a "
                       f"multi-node run needs the run folder on a file system every node shares")
    return Path(chosen)


def _sharded_model(cfg, vocab_size: int, device):
    """FSDP2: the model made on the meta device, sharded (shard_model), each rank's shards
    allocated on its device and drawn by init_weights (the weights one process would draw)."""
    from workbench.model import build_model
    from workbench.train.common import shard_model

    model = shard_model(build_model(cfg.model, vocab_size, initialize=False), device)
    model.to_empty(device=device)
    model.init_weights()
    return model


def _pretrain(cfg, resume: bool, dist, verbose: bool, stage_run: runner.StageRun):
    import dataclasses

    from workbench.checkpoint import load_checkpoint
    from workbench.evals.bpb import evaluate_bpb, val_batches
    from workbench.model import build_model, uses_flex
    from workbench.optim import build_optimizer
    from workbench.train.common import (
        broadcast_from_main,
        gather_objects,
        load_full_state_dict,
        resolve_device,
        seed_everything,
    )
    from workbench.train.loader import PackingLoader, merge_states
    from workbench.train.loop import MicroBatchStep, Steps, TrainResult, TrainState, train

    tokenizer, newest = check_inputs(cfg, resume, dist.is_main, worker=True)
    newest = _newest_everywhere(newest, dist, broadcast_from_main)
    device = resolve_device(cfg.run.device, dist.local_rank)
    if cfg.model.kind == "gpt" and device.type == "cpu" and uses_flex(cfg.model.attention, device):
        raise BadInput('[model] attention = "flex": torch has no flex_attention backward on the CPU; '
                       'train here with "auto" or "sdpa"')
    run_dir = stages.run_dir(cfg, "pretrain")
    train_cfg, seq_len = cfg.train, cfg.model.seq_len
    rows_per_step = train_cfg.total_batch_tokens // (train_cfg.device_batch_size * seq_len)
    if rows_per_step % dist.world_size:
        raise BadInput(f"[train] total_batch_tokens {train_cfg.total_batch_tokens} is {rows_per_step} rows of "
                       f"{seq_len} tokens: not divisible among {dist.world_size} processes")
    grad_accum_steps = rows_per_step // dist.world_size
    streams = train_cfg.data_streams or dist.world_size
    if streams % dist.world_size:
        raise BadInput(f"[train] data_streams {streams}: not divisible among {dist.world_size} processes")

    def same_model(section):  # [model] attention is a runtime choice: not part of the architecture
        return dataclasses.replace(section.resolved(), attention="auto")

    seed_everything(cfg.run.seed)
    loader_state = None
    total_steps, time_budget = runner.planned_steps(train_cfg.steps, train_cfg.time_budget, None)
    if newest is not None:
        checkpoint = load_checkpoint(newest, device="cpu" if dist.sharded else device, with_optimizer=True)
        if same_model(checkpoint.config.model) != same_model(cfg.model):
            raise BadInput(f"{newest}: the checkpoint's [model] differs from the config's; a resumed run keeps "
                           f"its architecture (start a new run for a new model)")
        if checkpoint.tokenizer.to_str() != tokenizer.to_str():
            raise BadInput(f"{cfg.tokenizer_path}: differs from the tokenizer the run started with "
                           f"({newest / 'tokenizer.json'})")
        if dist.sharded:
            model = _sharded_model(cfg, tokenizer.vocab_size, device)
            load_full_state_dict(model, checkpoint.model.state_dict())
        else:
            model = checkpoint.model
        if hasattr(model, "set_attention"):
            model.set_attention(cfg.model.attention)
    else:
        model = (_sharded_model(cfg, tokenizer.vocab_size, device) if dist.sharded
                 else build_model(cfg.model, tokenizer.vocab_size, device=device))
    state = TrainState(stage="pretrain", config=cfg, model=model, optimizers=build_optimizer(model, train_cfg),
                       tokenizer=tokenizer, run_dir=run_dir, device=device, dist=dist, verbose=verbose)
    if newest is not None:
        meta = runner.restore(state, checkpoint)
        loader_state = meta.get("loader_state")
        total_steps, time_budget = runner.planned_steps(train_cfg.steps, train_cfg.time_budget, meta)
        if total_steps is not None and state.step >= total_steps:  # nothing to train: leave the status alone
            if verbose and dist.is_main:
                print(f"pretrain: {run_dir} already reached step {state.step} of {total_steps}; "
                      f"raise [train] steps to train further")
            return TrainResult(step=state.step, tokens=state.tokens, stopped=False, best_val_bpb=state.best_val_bpb,
                               last_checkpoint=newest, last_loss=None, seconds=0.0)
    state.total_steps, state.time_budget = total_steps, time_budget
    model.train()
    starts = gather_objects(state.step, dist)
    if len(set(starts)) > 1:
        raise BadInput(f"{run_dir}: the ranks would resume at different steps {starts}; every node must see "
                       f"the same checkpoints (a shared file system)")

    try:
        loader = PackingLoader(cfg.data_dir, "train", tokenizer, seq_len, train_cfg.device_batch_size,
                               device=device, rank=dist.rank, world_size=dist.world_size, loop=True,
                               state=loader_state, streams=streams)
    except (KeyError, TypeError, ValueError) as error:  # a damaged data position in meta.json
        if loader_state is None:
            raise
        raise BadInput(f"{newest / 'meta.json'}: loader_state: {type(error).__name__}: {error}"[:300]) from None
    cached_val: list = []

    def val_fn(eval_model) -> dict[str, float]:
        if not cached_val:  # the same val rows every time, tokenized once
            cached_val.extend(val_batches(cfg, tokenizer, train_cfg.device_batch_size, device,
                                          train_cfg.eval_tokens, rank=dist.rank, world_size=dist.world_size))
        return {"val_bpb": evaluate_bpb(eval_model, tokenizer, cached_val, device, dtype=train_cfg.dtype,
                                        dist=dist)}

    writer = state.writer = stage_run.open_writer(total_steps, cfg)
    if newest is not None:
        writer.log("event", step=state.step,
                   message=f"resuming from {newest.name} (step {state.step}, {state.tokens:,} tokens)")
    if verbose and dist.is_main:
        steps = f"{total_steps} steps" if total_steps else f"steps for {train_cfg.time_budget}"
        print(f"pretrain: {model.num_params():,} params on {device}, {steps} of "
              f"{train_cfg.total_batch_tokens:,} tokens ({grad_accum_steps} x {dist.world_size} x "
              f"{train_cfg.device_batch_size} rows of {seq_len}); run folder {run_dir}"
              + (f"; resuming at step {state.step}" if state.step else ""))

    started = time.time()
    try:
        step_fn = MicroBatchStep(state, iter(loader), grad_accum_steps)
        result = train(state, Steps(step_fn, val_fn=val_fn, sys_fields=step_fn.sys_fields(),
                                    extra_meta_fn=lambda: {"loader_state": merge_states(
                                        gather_objects(loader.state_dict(), dist))}))
    finally:
        loader.close()
    best = f", best val bpb {result.best_val_bpb:.4f}" if result.best_val_bpb is not None else ""
    stage_run.finish(result, f"{result.step} steps, {result.tokens:,} tokens{best}")
    if verbose and dist.is_main:
        best = f"{result.best_val_bpb:.4f}" if result.best_val_bpb is not None else "-"
        print(f"pretrain: {'stopped' if result.stopped else 'done'} at step {result.step}, "
              f"{result.tokens:,} tokens in {time.time() - started:.1f}s, best val bpb {best}, "
              f"checkpoint {result.last_checkpoint}")
    return result
