"""`picochat sft CONFIG [--resume] [--detach]`: supervised fine-tuning on chat conversations.

Reads [sft] (and [train] for the optimizer and batch size in tokens): starts from a checkpoint
([sft] init_from; empty = the newest checkpoint of this run's pretraining, runs/NAME), trains on
[sft] datasets mixed by weight ("path:weight" chat JSONL or .json files, "path?:weight" for one that
may be missing, "synthetic:arith:weight", "synthetic:chat:weight"), and
writes its own run folder runs/NAME-sft with checkpoints whose meta says stage "sft", so evals and
the chat front ends know it is a chat model.

Batches hold one conversation per row in the chat format (docs/interfaces.md), padded to the longest row
(never split; longer than seq_len + 1 tokens: cut and counted); the loss covers the assistant's
tokens only (its text, tool calls and <|assistant_end|>; not user turns, not tool output). The
training loop and its micro-batch step are pretraining's (loop.train, loop.MicroBatchStep), the
run folder, flags and resume the runner's (runner.py): same run folder contract, control files,
checkpoints and --resume (the sampler position is part of each checkpoint).

Each evaluation logs the held-out loss and bits per byte of the assistant tokens, and samples
replies to held-out prompts: `end_rate` is the share of replies that end the turn with
<|assistant_end|>, `accuracy` the share of right final numbers where the answer is known.
[sft] eval_every = 0 never evaluates; [sft] val_fraction = 0 holds nothing out of the file datasets,
so a user with 30 facts trains on all 30 (then only synthetic data, if any, is evaluated).
"""

from __future__ import annotations

import argparse
import math
import time

from workbench import stages
from workbench.errors import BadInput
from workbench.train import runner

PROBE_PROMPTS = 16  # held-out prompts answered at each evaluation
PROBE_MAX_TOKENS = 64
VAL_BATCH_SIZE = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runner.add_arguments(parser, reads="[sft] and [train]", folder="RUN-sft", resume_from="the SFT run folder",
                         budget_help="fine-tune for this wall-clock time (e.g. 5m; overrides [sft] steps)")


def run(args: argparse.Namespace) -> int:
    from workbench import config as config_module

    cfg = config_module.load(args.config)
    budget = runner.check_budget(args.budget)
    return runner.launch(args, "sft", stages.run_dir(cfg, "sft"), check=lambda: start_checkpoint(cfg, args.resume),
                         train=lambda: sft(cfg, resume=args.resume, budget=budget or ""))


def start_checkpoint(cfg, resume: bool, worker: bool = False):
    """(the checkpoint SFT starts from: [sft] init_from or the newest pretraining one, the SFT
    run's newest checkpoint when resuming), after the run folder's guard (runner.start_checkpoint)."""
    return runner.start_checkpoint(cfg, "sft", cfg.sft.init_from, cfg.out_dir, "pretrain", resume, worker=worker)


def sft(cfg, resume: bool = False, verbose: bool = True, budget: str = ""):
    """Fine-tune per the config (for `budget`, e.g. "5m", instead of [sft] steps when given);
    returns loop.TrainResult. In-process entry point for tests, speedrun and the CLI."""
    with runner.StageRun(cfg, "sft") as stage_run:
        return _sft(cfg, resume, verbose, budget, stage_run)


def _sft(cfg, resume: bool, verbose: bool, budget: str, stage_run: runner.StageRun):
    from workbench.checkpoint import load_checkpoint
    from workbench.data.chat import SftBatches, load_datasets, val_batches
    from workbench.optim import build_optimizer
    from workbench.train.common import resolve_device, seed_everything
    from workbench.train.loop import MicroBatchStep, Steps, TrainState, train

    runner.single_process("sft")
    init, newest = start_checkpoint(cfg, resume, worker=True)
    device = resolve_device(cfg.run.device)
    run_dir = stages.run_dir(cfg, "sft")
    seed_everything(cfg.run.seed)
    data = load_datasets(cfg.sft.datasets, cfg.resolve_path, cfg.run.seed, cfg.sft.val_fraction,
                         tuple(cfg.sft.turn_prefixes))

    checkpoint = load_checkpoint(init, device=device, with_optimizer=newest is not None)
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    cfg = runner.stage_config(cfg, checkpoint)
    seq_len = cfg.model.seq_len
    state = TrainState(stage="sft", config=cfg, model=model,
                       optimizers=build_optimizer(model, cfg.train, lr_scale=cfg.sft.lr_scale), tokenizer=tokenizer,
                       run_dir=run_dir, device=device, lr_scale=cfg.sft.lr_scale, verbose=verbose)
    batches = SftBatches(data.train, tokenizer, seq_len, cfg.sft.device_batch_size, device=device)
    source = str(init)
    total_steps, time_budget = runner.planned_steps(cfg.sft.steps, budget, None)
    if newest is not None:
        meta = checkpoint.meta
        if "sft_state" not in meta:
            raise BadInput(f"{newest / 'meta.json'}: no sft_state (not an SFT checkpoint?), so it cannot be resumed")
        meta = runner.restore(state, checkpoint)
        source = meta.get("init_from", source)
        try:
            batches.load_state_dict(meta["sft_state"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise BadInput(f"{newest / 'meta.json'}: sft_state: {type(error).__name__}: {error}"[:300]) from None
        total_steps, time_budget = runner.planned_steps(cfg.sft.steps, budget, meta)
    state.total_steps, state.time_budget = total_steps, time_budget
    model.train()
    grad_accum_steps = max(1, cfg.train.total_batch_tokens // (cfg.sft.device_batch_size * seq_len))

    held_out, held_out_stats = val_batches(data.val, tokenizer, seq_len, VAL_BATCH_SIZE, device)
    writer = state.writer = stage_run.open_writer(total_steps, cfg)
    for line in [report.summary() for report in data.reports] + data.notes:
        writer.event(line)
        if verbose:
            print(f"sft: {line}")
    writer.event(f"starting from {source}" if newest is None else f"resuming from {newest.name} (step {state.step})")

    def val_fn(eval_model) -> dict[str, float]:
        results = held_out_loss(eval_model, tokenizer, held_out, device, cfg.train.dtype) if held_out else {}
        if data.probes:
            probe, sample = chat_probe(eval_model, tokenizer, data.probes[:PROBE_PROMPTS], device, seed=cfg.run.seed)
            results.update(probe)
            writer.log("sample", prompt=sample[0], text=sample[1])
        results.update(truncated=batches.stats.truncated, conversations=batches.stats.conversations)
        return results

    # eval_every = 0, or nothing held out (val_fraction = 0 on small files): train without evaluations
    evaluates = bool(cfg.sft.eval_every) and bool(held_out or data.probes)
    if not evaluates:
        why = ("[sft] eval_every = 0" if not cfg.sft.eval_every
               else "nothing held out ([sft] val_fraction, or fewer than 20 conversations per file)")
        writer.event(f"no evaluations: {why}")
        if verbose and cfg.sft.eval_every:  # asked for evaluations and gets none: say so where it is seen
            print(f"sft: no evaluations: {why}")

    if verbose:
        steps = f"{total_steps} steps" if total_steps else f"steps for {budget}"
        print(f"sft: {model.num_params():,} params on {device}, {steps} of "
              f"{grad_accum_steps} x {cfg.sft.device_batch_size} conversations (up to {seq_len + 1} tokens), "
              f"from {source}; run folder {run_dir}" + (f"; resuming at step {state.step}" if state.step else ""))
    started = time.time()
    step_fn = MicroBatchStep(state, batches, grad_accum_steps)
    result = train(state, Steps(step_fn, val_fn=val_fn if evaluates else None, eval_every=cfg.sft.eval_every or None,
                                save_every=cfg.sft.save_every, sample_every=0, sys_fields=step_fn.sys_fields(),
                                extra_meta_fn=lambda: {"sft_state": batches.state_dict(), "init_from": source}))
    stats = batches.stats
    skipped = "".join(f", {count} skipped: {reason}" for reason, count in stats.skipped.most_common())
    summary = (f"{result.step} steps, {stats.conversations:,} conversations ({stats.truncated} truncated to "
               f"{seq_len + 1} tokens{skipped})")
    if held_out_stats.truncated:
        summary += f"; {held_out_stats.truncated} held-out conversations truncated"
    stage_run.finish(result, summary)
    if verbose:
        print(f"sft: {'stopped' if result.stopped else 'done'}: {summary} in {time.time() - started:.1f}s; "
              f"checkpoint {result.last_checkpoint}")
    return result


def held_out_loss(model, tokenizer, batches, device, dtype="auto") -> dict[str, float]:
    """Mean loss (nats per trained token) and bits per byte of the assistant tokens of the held-out
    conversations."""
    import torch

    from workbench.evals.bpb import evaluate_bpb
    from workbench.train.common import autocast

    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs, targets in batches:
                with autocast(torch.device(device), dtype):
                    losses = model(inputs, targets, loss_reduction="none")
                total += float(losses.float().sum())
                count += int((targets >= 0).sum())
        bpb = evaluate_bpb(model, tokenizer, batches, device, dtype=dtype)
    finally:
        model.train(was_training)
    return {"val_loss": total / count if count else math.nan, "val_bpb": bpb}


def chat_probe(model, tokenizer, probes, device, seed: int = 0, temperature: float = 0.8,
               max_tokens: int = PROBE_MAX_TOKENS) -> tuple[dict[str, float], tuple[str, str]]:
    """Sample one reply per held-out prompt. Returns ({"end_rate": share of replies that end with
    <|assistant_end|>, "accuracy": share of right final numbers among prompts with a known answer},
    (the first prompt, its reply) as a sample)."""
    from workbench.engine import Engine, SamplingParams
    from workbench.tasks.answers import number_correct
    from workbench.tokenizer import ASSISTANT_END

    engine = Engine(model, tokenizer, device=device)
    end_id = tokenizer.special_id(ASSISTANT_END)
    ended = correct = scored = 0
    sample = ("", "")
    for index, (messages, answer) in enumerate(probes):
        params = SamplingParams(temperature=temperature, top_k=50, max_tokens=max_tokens, seed=seed ^ index)  # one per prompt; seed + index could pass MAX_SEED
        generation = engine.generate(tokenizer.render_for_completion(messages), params, num_samples=1)[0]
        text = tokenizer.decode(generation.tokens)
        ended += int(generation.tokens[-1:] == [end_id])
        if answer is not None:
            scored += 1
            correct += number_correct(text, answer)
        if index == 0:
            content = messages[-1]["content"]
            sample = (content if isinstance(content, str) else str(content), text)
    results = {"end_rate": ended / len(probes) if probes else math.nan}
    if scored:
        results["accuracy"] = correct / scored
    return results, sample
