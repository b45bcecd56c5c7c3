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
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from workbench.errors import BadInput


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config (TOML); reads [run], [model] and [train]")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint of the run folder")
    parser.add_argument("--detach", action="store_true",
                        help="run in the background (log in RUN/train.log) and return at once")
    parser.add_argument("--budget", metavar="DURATION",
                        help="train for this wall-clock time (e.g. 10m; overrides [train] time_budget and steps)")


def check_budget(budget: str | None) -> str | None:
    """--budget, checked like [train] time_budget (pretrain and sft share the flag)."""
    from workbench.config import parse_duration

    if budget is not None:
        try:
            parse_duration(budget)
        except ValueError:
            raise BadInput(f"--budget: use a duration like 90s, 10m or 1h, got {budget!r}") from None
    return budget


def planned_steps(steps: int, time_budget: str, meta: dict | None) -> tuple[int | None, float | None]:
    """(total steps, time budget in seconds or None) for the loop: total steps None means the loop
    picks them from the budget. A checkpoint whose run fixed its steps for a time budget keeps
    them: a resumed run never measures again."""
    from workbench.config import parse_duration

    if not time_budget:
        return steps, None
    if meta and meta.get("time_budget") and meta.get("total_steps"):
        return int(meta["total_steps"]), float(meta["time_budget"])
    return None, parse_duration(time_budget)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from workbench import config as config_module
    from workbench import runs

    cfg = config_module.load(args.config)
    if check_budget(args.budget):
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, time_budget=args.budget))
    if args.detach:
        check_inputs(cfg, args.resume)  # fail here, in the terminal, not in a log file
        argv = [str(Path(args.config).resolve())] + (["--resume"] if args.resume else [])
        argv += ["--budget", args.budget] if args.budget else []
        return runs.relaunch_detached("pretrain", argv, cfg.stage_dir("pretrain"))
    result = pretrain(cfg, resume=args.resume)
    if result.stopped:
        print(f"pretrain stopped at step {result.step}; continue with: picochat pretrain {args.config} --resume")
    return 0


def check_inputs(cfg, resume: bool, is_main: bool = True, worker: bool = False):
    """Everything that can be wrong before training starts, as BadInput: data and tokenizer
    missing, a run folder that would be overwritten, a run that is already going. The worker
    (not the launcher of a detached one) takes the run folder's lock here.
    Returns (tokenizer, newest checkpoint folder or None)."""
    from workbench.checkpoint_files import guard_run_folder
    from workbench.data.shards import list_shards
    from workbench.tokenizer import Tokenizer

    if not list_shards(cfg.data_dir, "train"):
        raise BadInput(f"{cfg.data_dir}: no prepared training data; run `picochat prepare CONFIG` first")
    if not Path(cfg.tokenizer_path).exists():
        raise BadInput(f"{cfg.tokenizer_path}: no tokenizer; run `picochat tokenizer CONFIG` first")
    tokenizer = Tokenizer.from_file(cfg.tokenizer_path)
    # Under torchrun only rank 0 checks for a running worker: it may have written status.json already.
    newest = guard_run_folder(cfg.stage_dir("pretrain"), "pretrain", resume, check_running=is_main,
                              take_lock=worker)
    return tokenizer, newest


def pretrain(cfg, resume: bool = False, verbose: bool = True):
    """Pretrain per the config; returns loop.TrainResult. In-process entry point for tests,
    speedrun and the CLI."""
    from workbench.runs import unlock_run_folder
    from workbench.train.common import cleanup_distributed, setup_distributed

    dist = setup_distributed(cfg.run.device, cfg.train.distributed, cfg.train.dist_timeout)
    try:
        return _pretrain(cfg, resume, dist, verbose)
    finally:
        unlock_run_folder(cfg.stage_dir("pretrain"))  # also when it failed before its RunWriter existed
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


def _pretrain(cfg, resume: bool, dist, verbose: bool):
    import dataclasses

    from workbench.checkpoint import load_checkpoint
    from workbench.evals.bpb import evaluate_bpb, val_batches
    from workbench.model import build_model, uses_flex
    from workbench.optim import build_optimizer
    from workbench.runs import RunWriter, freeze_config
    from workbench.train.common import (
        broadcast_from_main,
        gather_objects,
        load_full_state_dict,
        resolve_device,
        restore_rng_states,
        seed_everything,
    )
    from workbench.train.loader import PackingLoader, merge_states
    from workbench.train.loop import TrainResult, train

    tokenizer, newest = check_inputs(cfg, resume, dist.is_main, worker=True)
    newest = _newest_everywhere(newest, dist, broadcast_from_main)
    device = resolve_device(cfg.run.device, dist.local_rank)
    if cfg.model.kind == "gpt" and device.type == "cpu" and uses_flex(cfg.model.attention, device):
        raise BadInput('[model] attention = "flex": torch has no flex_attention backward on the CPU; '
                       'train here with "auto" or "sdpa"')
    run_dir = cfg.stage_dir("pretrain")
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
    start_step, tokens_seen, loader_state, best_val_bpb = 0, 0, None, None
    total_steps, time_budget = planned_steps(train_cfg.steps, train_cfg.time_budget, None)
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
        optimizers = build_optimizer(model, train_cfg)
        optimizers.load_state_tensors(checkpoint.optimizer_tensors)
        meta = checkpoint.meta
        start_step, tokens_seen = int(meta["step"]), int(meta.get("tokens", 0))
        loader_state, best_val_bpb = meta.get("loader_state"), meta.get("best_val_bpb")
        restore_rng_states(meta.get("rng_states"))
        total_steps, time_budget = planned_steps(train_cfg.steps, train_cfg.time_budget, meta)
        if total_steps is not None and start_step >= total_steps:  # nothing to train: leave the status alone
            if verbose and dist.is_main:
                print(f"pretrain: {run_dir} already reached step {start_step} of {total_steps}; "
                      f"raise [train] steps to train further")
            return TrainResult(step=start_step, tokens=tokens_seen, stopped=False,
                               best_val_bpb=meta.get("best_val_bpb"), last_checkpoint=newest,
                               last_loss=None, seconds=0.0)
    else:
        model = (_sharded_model(cfg, tokenizer.vocab_size, device) if dist.sharded
                 else build_model(cfg.model, tokenizer.vocab_size, device=device))
        optimizers = build_optimizer(model, train_cfg)
    model.train()
    starts = gather_objects(start_step, dist)
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

    writer = None
    if dist.is_main:
        writer = RunWriter(run_dir, "pretrain", total_steps=total_steps)
        freeze_config(run_dir, cfg.frozen().to_toml())
        if newest is not None:
            writer.log("event", step=start_step,
                       message=f"resuming from {newest.name} (step {start_step}, {tokens_seen:,} tokens)")
    if verbose and dist.is_main:
        steps = f"{total_steps} steps" if total_steps else f"steps for {train_cfg.time_budget}"
        print(f"pretrain: {model.num_params():,} params on {device}, {steps} of "
              f"{train_cfg.total_batch_tokens:,} tokens ({grad_accum_steps} x {dist.world_size} x "
              f"{train_cfg.device_batch_size} rows of {seq_len}); run folder {run_dir}"
              + (f"; resuming at step {start_step}" if start_step else ""))

    started = time.time()
    try:
        result = train(stage="pretrain", config=cfg, model=model, optimizers=optimizers, tokenizer=tokenizer,
                       train_batches=iter(loader), grad_accum_steps=grad_accum_steps, writer=writer,
                       run_dir=run_dir, total_steps=total_steps, device=device, start_step=start_step,
                       tokens_seen=tokens_seen, val_fn=val_fn, best_val_bpb=best_val_bpb,
                       extra_meta_fn=lambda: {"loader_state": merge_states(gather_objects(loader.state_dict(), dist))},
                       dist=dist,
                       verbose=verbose, time_budget=time_budget)
    except BaseException as error:
        if writer is not None:
            message = str(error) if isinstance(error, BadInput) else f"{type(error).__name__}: {error}"
            writer.finish("failed", message)
        raise
    finally:
        loader.close()
    if writer is not None:
        if result.stopped:
            writer.finish("stopped", f"stopped at step {result.step}; continue with --resume")
        else:
            best = f", best val bpb {result.best_val_bpb:.4f}" if result.best_val_bpb is not None else ""
            writer.finish("done", f"{result.step} steps, {result.tokens:,} tokens{best}")
    if verbose and dist.is_main:
        best = f"{result.best_val_bpb:.4f}" if result.best_val_bpb is not None else "-"
        print(f"pretrain: {'stopped' if result.stopped else 'done'} at step {result.step}, "
              f"{result.tokens:,} tokens in {time.time() - started:.1f}s, best val bpb {best}, "
              f"checkpoint {result.last_checkpoint}")
    return result
