"""`picochat grpo CONFIG [--resume] [--detach]`: reinforcement learning with GRPO.

Group relative policy optimization as loop.train's step function (the loop does the schedule,
logging, control files, checkpoints and evaluations, as for pretraining and SFT). Each step:

    1. take prompts_per_step prompts of the task (a pure function of the step: resume-safe)
    2. sample group_size completions of each from the current model (the engine shares the
       prompt's prefill across the group and runs the calculator, forcing its output in)
    3. reward every completion; advantage = reward - group mean (divided by the group's std when
       [grpo] normalize_std); a group whose rewards are all equal teaches nothing (advantage 0)
    4. loss = -sum(advantage * log p(token) * mask) / sum(mask) over all completions' tokens
       (token-level normalization, [grpo] loss_normalization = "token": long answers are not
       down-weighted; "sequence" averages each completion first, "constant" divides by
       completions * max_new_tokens); the mask is 1 only on tokens the model sampled, never on the
       prompt or on forced tool output. Optionally a KL penalty to a frozen copy of the starting
       model (kl_coef > 0, the k3 estimator)
    5. clip gradients, scheduled learning rate, optimizer step; [grpo] iterations_per_batch > 1
       takes several optimizer steps on the same samples (as TRL's num_iterations), and from the
       second on the policy has moved away from the one that sampled them: with clip_epsilon > 0
       the PPO-style ratio exp(log p - log p_sampling) is clipped to 1 +- clip_epsilon (with one
       iteration the ratio is always 1 and the clip does nothing). Each optimizer step is
       loop.clip_and_step, the one the micro-batch step of pretraining and SFT takes. Then the loop
       logs, checkpoints and obeys the control files

Tasks ([grpo] task, or a mixture [grpo] tasks = ["arith:1.0", "gsm8k:0.5"] whose prompts are drawn by
weight and scored by their own task's reward): "arith" (synthetic word problems of difficulty 1-2,
numeric reward), "gsm8k" (train split, numeric reward), "arc" (ARC-Easy train split, letter reward),
"tool" (synthetic problems with large operands, reward for using the calculator correctly and
answering right). Each task lives in workbench/tasks/ (its data, prompts, scoring and reward, the
same scoring as its eval); tasks/registry.py builds the [grpo] one.

Measured, not hoped for: [grpo] held_out prompts of each task (never trained on) are answered
greedily by the starting checkpoint (the frozen-policy baseline, step 0) and by the policy every
save_every steps and at the end; the "eval" records carry greedy accuracy with its 95% interval,
the mean reward and accuracy of sampled answers (4 per prompt, first 32 prompts), and at the end the
paired change of greedy accuracy against the start on the same prompts with its 95% interval
(`{task}_greedy_gain`, `_gain_low`, `_gain_high`).

Logged per step: "grpo" records (reward_mean, reward_std, zero_variance_fraction,
completion_length, accuracy, plus loss, lr, kl, clip_fraction) and "train" records (loss, lr,
grad_norm, tokens, step_seconds) so the dashboard plots them like any training run.
Writes runs/NAME-grpo; checkpoints carry meta stage "grpo". Starts from [grpo] init_from, or the
newest checkpoint of runs/NAME-sft.
"""

from __future__ import annotations

import argparse
import copy
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from workbench import stages
from workbench.evals.common import describe_greedy_gain
from workbench.tasks.base import HELD_OUT_SEED_OFFSET, Prompt, Task
from workbench.tasks.registry import build_task
from workbench.train import runner

HELD_OUT_SAMPLED_PROMPTS = 32  # the first held-out prompts also get sampled answers (mean reward)
HELD_OUT_SAMPLES = 4  # completions per such prompt at the training temperature
Z95 = 1.959964  # two-sided 95% normal quantile
ADVANTAGE_EPSILON = 1e-4


# ---------------------------------------------------------------------------------------------
# the math: advantages and the loss


def group_advantages(rewards_by_group, normalize_std: bool = True, epsilon: float = ADVANTAGE_EPSILON):
    """[groups, group_size] rewards -> advantages of the same shape: reward minus the group mean,
    divided by the group's (unbiased) std when normalize_std. Equal rewards give zeros."""
    import torch

    rewards_by_group = torch.as_tensor(rewards_by_group, dtype=torch.float32)
    centered = rewards_by_group - rewards_by_group.mean(dim=1, keepdim=True)
    if normalize_std:
        centered = centered / (rewards_by_group.std(dim=1, keepdim=True) + epsilon)
    return centered


def loss_weights(mask, mode: str = "token", max_new_tokens: int = 1):
    """Per-token weights [B, T] of the loss over a whole batch of completions (mask: 1 on sampled
    tokens). token: 1 / all masked tokens (every token counts the same, DAPO); sequence: 1 /
    (completion length * completions), each completion's mean, so a long answer counts no more
    than a short one (the GRPO paper); constant: 1 / (completions * max_new_tokens), no length
    bias either way (Dr. GRPO)."""
    mask = mask.float()
    rows = max(mask.size(0), 1)
    if mode == "token":
        return mask / max(float(mask.sum()), 1.0)
    if mode == "sequence":
        return mask / mask.sum(dim=1, keepdim=True).clamp(min=1.0) / rows
    if mode == "constant":
        return mask / (rows * max(max_new_tokens, 1))
    raise ValueError(f"unknown loss normalization {mode!r}")


def policy_loss(logprobs, mask, advantages, old_logprobs=None, ref_logprobs=None, clip_epsilon: float = 0.0,
                kl_coef: float = 0.0, normalizer: float | None = None, weights=None):
    """The GRPO loss over [B, T] token log-probabilities.

    mask [B, T] (1 = a sampled completion token), advantages [B] (one per completion). Without
    clipping the per-token objective is advantage * logprob (the policy gradient); with
    clip_epsilon > 0 it is min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) with ratio =
    exp(logprob - old_logprob). kl_coef > 0 adds kl_coef * KL(policy || reference) per token (k3
    estimator: exp(r - l) - (r - l) - 1). Normalized by the number of masked tokens (or
    `normalizer`, the count over all micro-batches), or weighted per token by `weights`
    (loss_weights). Stats are means over the masked tokens. Returns (loss, stats dict of floats)."""
    import torch

    mask = mask.to(logprobs.dtype)
    advantages = advantages.to(logprobs.dtype).unsqueeze(1)
    count = float(mask.sum()) if normalizer is None else float(normalizer)
    count = max(count, 1.0)
    stats: dict[str, float] = {}
    if clip_epsilon > 0:
        old = logprobs.detach() if old_logprobs is None else old_logprobs
        ratio = torch.exp(logprobs - old)
        clipped = ratio.clamp(1 - clip_epsilon, 1 + clip_epsilon)
        objective = torch.minimum(ratio * advantages, clipped * advantages)
        stats["clip_fraction"] = float((((ratio - clipped).abs() > 0).to(mask.dtype) * mask).sum()) / count
    else:
        objective = logprobs * advantages
    per_token = -objective
    if kl_coef > 0 and ref_logprobs is not None:
        difference = ref_logprobs - logprobs
        kl = torch.exp(difference) - difference - 1
        per_token = per_token + kl_coef * kl
        stats["kl"] = float((kl.detach() * mask).sum()) / count
    loss = (per_token * mask).sum() / count if weights is None else (per_token * weights.to(per_token.dtype)).sum()
    return loss, stats


def proportion_interval(correct: list[bool]) -> float:
    """Half-width of the 95% normal interval of an accuracy measured on len(correct) prompts."""
    n = len(correct)
    if not n:
        return math.nan
    p = sum(correct) / n
    return Z95 * math.sqrt(p * (1 - p) / n)


def paired_difference(before: list[bool], after: list[bool]) -> tuple[float, float, float]:
    """The change in accuracy from `before` to `after` on the same prompts, with its 95% interval
    (normal approximation of the mean of the paired differences): (change, low, high). Pairing
    removes the prompts' own difficulty from the noise, so it is far tighter than comparing two
    independent accuracies."""
    n = len(before)
    if n != len(after) or n < 2:
        raise ValueError("paired_difference needs two equally long lists of at least 2 results")
    differences = [int(b) - int(a) for a, b in zip(before, after, strict=True)]
    mean = sum(differences) / n
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1)
    half = Z95 * math.sqrt(variance / n)
    return mean, mean - half, mean + half


# ---------------------------------------------------------------------------------------------
# rollouts


@dataclass
class Group:
    prompt: Prompt
    prompt_ids: list[int]
    completions: list[list[int]] = field(default_factory=list)
    sampled_masks: list[list[int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)


def rollout(engine, tokenizer, task: Task, prompts: list[Prompt], group_size: int, params) -> list[Group]:
    """Sample and score group_size completions per prompt (one shared prefill per prompt; every
    prompt's rows decode together, generate_groups)."""
    from workbench.evals.generation import fit_prompt
    from workbench.tasks.answers import parse_tokens

    context = getattr(engine.model, "max_context", None) if getattr(engine.model, "supports_kv_cache", False) else None
    prompt_ids = [fit_prompt(tokenizer.render_for_completion(p.messages), context, params.max_tokens) for p in prompts]
    seeded = [replace(params, seed=None if params.seed is None else params.seed + i) for i in range(len(prompts))]
    groups = []
    for prompt, ids, generations in zip(prompts, prompt_ids, generate_groups(engine, prompt_ids, seeded, group_size),
                                        strict=True):
        group = Group(prompt, ids)
        scorer = task.scorer_for(prompt)
        for generation in generations:
            text = tokenizer.decode(generation.tokens)
            group.completions.append(list(generation.tokens))
            group.sampled_masks.append(list(generation.sampled_mask))
            group.texts.append(text)
            # scored on the tokens' structure: text that spells a marker is not a tool call
            completion = parse_tokens(tokenizer, generation.tokens)
            group.rewards.append(scorer.reward(completion, prompt.answer))
            group.correct.append(scorer.correct(completion, prompt.answer))
        groups.append(group)
    return groups


ROLLOUT_PREFILL_CHUNK = 4096  # prompt tokens prefilled per batch step: every prompt joins within a step or two


def generate_groups(engine, prompt_ids: list[list[int]], params: list, num_samples: int) -> list[list]:
    """num_samples completions of each prompt (Engine.generate's Generations), all prompts' rows
    decoded in one continuous batch (engine/batch.py): a step's 32 rows, or 200 held-out prompts,
    take one batched forward per token instead of one forward per prompt per token. Each prompt
    samples from its own seeded generator, so its completions do not depend on the others."""
    from workbench.engine.engine import Generation

    batch = engine.batch(prefill_chunk=ROLLOUT_PREFILL_CHUNK)
    members = [batch.add(ids, settings, num_samples) for ids, settings in zip(prompt_ids, params, strict=True)]
    pending = len(members)
    while pending:
        _, ended = batch.step()
        for member in ended:
            if member.error is not None:
                raise member.error
        pending -= len(ended)
    return [[Generation(row.tokens, row.sampled_mask, row.finish_reason) for row in member.group.rows]
            for member in members]


def build_batch(groups: list[Group], pad_id: int, device="cpu"):
    """Rows prompt + completion -> (inputs, targets, mask) [B, T], padded like SFT batches: the
    mask (and a target other than -1) only where the target is a token the model sampled, never
    on the prompt, forced tool output or padding."""
    from workbench.data.chat import collate

    rows = [(group.prompt_ids + completion, [0] * len(group.prompt_ids) + sampled)
            for group in groups for completion, sampled in zip(group.completions, group.sampled_masks, strict=True)]
    inputs, targets = collate(rows, pad_id)
    return inputs.to(device), targets.to(device), (targets >= 0).float().to(device)


def token_logprobs(model, inputs, targets, chunk_rows: int, device, dtype="auto"):
    """log p(target) per position [B, T] (0 where target is -1), in chunks of rows."""
    import torch

    from workbench.train.common import autocast

    pieces = []
    for start in range(0, inputs.size(0), chunk_rows):
        with autocast(torch.device(device), dtype):
            losses = model(inputs[start:start + chunk_rows], targets[start:start + chunk_rows], loss_reduction="none")
        pieces.append(-losses.float())
    return torch.cat(pieces)


def group_stats(groups: list[Group]) -> dict[str, float]:
    all_rewards = [r for g in groups for r in g.rewards]
    n = len(all_rewards)
    mean = sum(all_rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in all_rewards) / n)
    return {
        "reward_mean": mean,
        "reward_std": std,
        "zero_variance_fraction": sum(1 for g in groups if max(g.rewards) == min(g.rewards)) / len(groups),
        "completion_length": sum(len(c) for g in groups for c in g.completions) / n,
        "accuracy": sum(c for g in groups for c in g.correct) / n,
    }


def evaluate_task(engine, tokenizer, task: Task, params, seed: int,
                  samples: int = HELD_OUT_SAMPLES) -> tuple[dict[str, float], dict[str, list[bool]]]:
    """The policy on each task's held-out prompts (each part of a mixture on its own): the greedy
    answer's accuracy on all of them with its 95% interval, and the mean reward and accuracy of
    `samples` completions per prompt at the training temperature on the first
    HELD_OUT_SAMPLED_PROMPTS (what GRPO maximizes; fixed seeds, so two evaluations differ only by
    the model). Returns (results, each task's greedy right/wrong per prompt, for paired_difference)."""
    results: dict[str, float] = {}
    correct: dict[str, list[bool]] = {}
    lengths = []
    for part in task.evaluated():
        sampled = group_stats(rollout(engine, tokenizer, task, part.held_out[:HELD_OUT_SAMPLED_PROMPTS], samples,
                                      replace(params, seed=seed)))
        greedy = rollout(engine, tokenizer, task, part.held_out, 1, replace(params, temperature=0.0))
        correct[part.name] = [group.correct[0] for group in greedy]
        results.update({f"{part.name}_reward": sampled["reward_mean"], f"{part.name}_accuracy": sampled["accuracy"],
                        f"{part.name}_greedy_accuracy": group_stats(greedy)["accuracy"],
                        f"{part.name}_greedy_ci95": proportion_interval(correct[part.name]),
                        f"{part.name}_held_out": len(greedy)})
        lengths.append(sampled["completion_length"])
    results["completion_length"] = sum(lengths) / len(lengths)
    return results, correct


def encode_results(correct: dict[str, list[bool]]) -> dict[str, str]:
    """Per-prompt right/wrong as "0110...": compact enough for meta.json (a resumed run compares its
    end with the start it never saw)."""
    return {name: "".join("1" if c else "0" for c in values) for name, values in correct.items()}


def decode_results(encoded: Any) -> dict[str, list[bool]]:
    """encode_results' inverse; anything malformed (a hand-edited meta.json) is left out."""
    if not isinstance(encoded, dict):
        return {}
    return {name: [c == "1" for c in text] for name, text in encoded.items()
            if isinstance(name, str) and isinstance(text, str) and text and set(text) <= {"0", "1"}}


# ---------------------------------------------------------------------------------------------
# the CLI verb and the stage: rollouts and the policy loss as loop.train's step function


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runner.add_arguments(parser, reads="[grpo] and [train]", folder="RUN-grpo", resume_from="the GRPO run folder")


def run(args: argparse.Namespace) -> int:
    from workbench import config as config_module

    cfg = config_module.load(args.config)

    def check() -> None:
        start_checkpoint(cfg, args.resume)
        build_task(cfg)

    return runner.launch(args, "grpo", stages.run_dir(cfg, "grpo"), check=check, train=lambda: grpo(cfg, resume=args.resume))


def start_checkpoint(cfg, resume: bool, worker: bool = False):
    """(the checkpoint GRPO starts from: [grpo] init_from or the newest SFT one, the GRPO run's
    newest checkpoint when resuming), after the run folder's guard (runner.start_checkpoint)."""
    return runner.start_checkpoint(cfg, "grpo", cfg.grpo.init_from, stages.run_dir(cfg, "sft"), "sft", resume,
                                   worker=worker)


@dataclass
class GrpoResult:
    step: int
    stopped: bool
    last_checkpoint: Path | None
    rewards: list[float]  # mean reward of each step this process trained
    held_out: dict[str, dict[str, float]]  # "start"/"end" -> evaluate_task results
    seconds: float
    # task -> (change of greedy accuracy from the start, 95% low, high) on the same held-out prompts
    gains: dict[str, tuple[float, float, float]] = field(default_factory=dict)


def grpo(cfg, resume: bool = False, verbose: bool = True, task: Task | None = None) -> GrpoResult:
    """GRPO per the config (see the module docstring). In-process entry point for tests, speedrun
    and the CLI; `task` replaces the [grpo] task (tests train on a toy reward)."""
    with runner.StageRun(cfg, "grpo") as stage_run:
        return _grpo(cfg, resume, verbose, task, stage_run)


def _grpo(cfg, resume: bool, verbose: bool, task: Task | None, stage_run: runner.StageRun) -> GrpoResult:
    import torch

    from workbench.checkpoint import load_checkpoint
    from workbench.engine import Engine, SamplingParams
    from workbench.optim import build_optimizer
    from workbench.train.common import resolve_device, seed_everything
    from workbench.train.loop import StepOutcome, Steps, TrainState, clip_and_step, train

    settings = cfg.grpo
    runner.single_process("grpo")
    init, newest = start_checkpoint(cfg, resume, worker=True)
    task = task or build_task(cfg)
    device = resolve_device(cfg.run.device)
    run_dir = stages.run_dir(cfg, "grpo")
    seed_everything(cfg.run.seed)

    checkpoint = load_checkpoint(init, device=device, with_optimizer=newest is not None)
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    cfg = runner.stage_config(cfg, checkpoint)
    optimizers = build_optimizer(model, cfg.train, lr_scale=settings.lr_scale)
    state = TrainState(stage="grpo", config=cfg, model=model, optimizers=optimizers, tokenizer=tokenizer,
                       run_dir=run_dir, device=device, total_steps=settings.steps, lr_scale=settings.lr_scale,
                       verbose=verbose)
    source = str(init)
    start_correct: dict[str, list[bool]] = {}  # the starting policy's greedy results, per held-out prompt
    if newest is not None:
        meta = runner.restore(state, checkpoint)
        source = meta.get("init_from", source)
        start_correct = decode_results(meta.get("held_out_start"))
    reference = None
    if settings.kl_coef > 0:  # a frozen copy of the starting model (on resume: reloaded from init_from)
        reference = copy.deepcopy(model) if newest is None else load_checkpoint(source, device=device).model
        reference.eval().requires_grad_(False)

    engine = Engine(model, tokenizer, device=device)
    params = SamplingParams(temperature=settings.temperature, top_k=0, top_p=1.0,
                            max_tokens=settings.max_new_tokens, seed=cfg.run.seed)
    chunk_rows = max(1, cfg.train.device_batch_size)

    writer = state.writer = stage_run.open_writer(settings.steps, cfg)
    writer.event(f"starting from {source}" if newest is None else f"resuming from {newest.name} (step {state.step})")
    if verbose:
        print(f"grpo: {model.num_params():,} params on {device}, task {task.name}, {settings.steps} steps of "
              f"{settings.prompts_per_step} prompts x {settings.group_size} samples, from {source}; "
              f"run folder {run_dir}" + (f"; resuming at step {state.step}" if state.step else ""))

    held_out: dict[str, dict[str, float]] = {}
    gains: dict[str, tuple[float, float, float]] = {}
    step_rewards: list[float] = []

    def held_out_eval(eval_model) -> dict[str, float]:
        """The loop's evaluation (step 0 of a fresh run, every save_every steps and the end, each
        after its checkpoint): greedy and sampled answers to the held-out prompts, and the paired
        gain against the frozen start on the same prompts."""
        results, correct = evaluate_task(engine, tokenizer, task, params, seed=cfg.run.seed + HELD_OUT_SEED_OFFSET)
        if state.step == 0:
            start_correct.update(correct)
            held_out["start"] = results
        for name, after in correct.items():  # the same prompts as the frozen start: a paired comparison
            before = start_correct.get(name)
            if state.step > 0 and before is not None and len(before) == len(after) >= 2:
                gains[name] = paired_difference(before, after)
                results.update({f"{name}_greedy_gain": gains[name][0], f"{name}_greedy_gain_low": gains[name][1],
                                f"{name}_greedy_gain_high": gains[name][2]})
        if state.step == settings.steps:
            held_out["end"] = results
        return results

    def policy_step(state: TrainState) -> StepOutcome:
        """Steps 1-5 of the module docstring at the loop's learning rate."""
        prompts = [task.prompt_at(state.step * settings.prompts_per_step + i)
                   for i in range(settings.prompts_per_step)]
        model.eval()
        groups = rollout(engine, tokenizer, task, prompts, settings.group_size,
                         replace(params, seed=cfg.run.seed * 1_000_003 + state.step * 1009))
        stats = group_stats(groups)
        advantages = group_advantages([g.rewards for g in groups], settings.normalize_std).flatten().to(device)
        inputs, targets, mask = build_batch(groups, tokenizer.bos_id, device)
        count = float(mask.sum())
        weights = loss_weights(mask, settings.loss_normalization, settings.max_new_tokens)
        iterations = settings.iterations_per_batch

        # the policy-gradient update (old / reference log-probs first, without grad)
        model.train()
        old_logprobs = ref_logprobs = None
        with torch.no_grad():
            if settings.clip_epsilon > 0:
                old_logprobs = token_logprobs(model, inputs, targets, chunk_rows, device, cfg.train.dtype)
            if reference is not None:
                ref_logprobs = token_logprobs(reference, inputs, targets, chunk_rows, device, cfg.train.dtype)
        # Every group equal (all right or all wrong) and no KL: nothing to learn. Skip the
        # optimizer step, which would otherwise still move the weights (momentum, and
        # Muon's orthogonalized update has a fixed size whatever the gradient).
        updated = bool(advantages.abs().max() > 0) or reference is not None
        loss_total, extra, grad_norm = 0.0, {}, 0.0
        for _ in range(iterations if updated else 0):
            for start in range(0, inputs.size(0), chunk_rows):
                rows = slice(start, start + chunk_rows)
                logprobs = token_logprobs(model, inputs[rows], targets[rows], chunk_rows, device, cfg.train.dtype)
                loss, chunk_stats = policy_loss(
                    logprobs, mask[rows], advantages[rows],
                    None if old_logprobs is None else old_logprobs[rows],
                    None if ref_logprobs is None else ref_logprobs[rows],
                    settings.clip_epsilon, settings.kl_coef, normalizer=count, weights=weights[rows])
                loss.backward()
                loss_total += loss.item() / iterations
                for key, value in chunk_stats.items():  # each chunk's share of the whole batch
                    extra[key] = extra.get(key, 0.0) + value / iterations
            grad_norm = float(clip_and_step(model, optimizers, cfg.train.grad_clip))

        step_rewards.append(stats["reward_mean"])
        best = groups[0].rewards.index(max(groups[0].rewards))
        summary = (f"reward {stats['reward_mean']:.3f} ± {stats['reward_std']:.3f} | acc {stats['accuracy']:.3f} | "
                   f"zero-var {stats['zero_variance_fraction']:.2f} | len {stats['completion_length']:.1f}")
        return StepOutcome(loss=loss_total, tokens=int(inputs.numel()), grad_norm=grad_norm,
                           stats={**stats, **extra, "updated": updated},
                           sample=(groups[0].prompt.messages[-1]["content"], groups[0].texts[best]), summary=summary)

    result = train(state, Steps(
        policy_step, val_fn=held_out_eval, eval_every=settings.save_every, save_every=settings.save_every,
        sample_every=0, schedule=replace(cfg.train, warmup_steps=0),  # a short RL run needs no warmup
        extra_meta_fn=lambda: {"init_from": source, "task": task.name, "held_out_start": encode_results(start_correct)},
        sys_fields={"task": task.name, "group_size": settings.group_size,
                    "prompts_per_step": settings.prompts_per_step,
                    "iterations_per_batch": settings.iterations_per_batch,
                    "loss_normalization": settings.loss_normalization}))
    described = [describe_greedy_gain(name, held_out.get("end", {})) for name in gains]
    stage_run.finish(result, "; ".join([f"{result.step} steps"] + [text for text in described if text]))
    return GrpoResult(step=result.step, stopped=result.stopped, last_checkpoint=result.last_checkpoint,
                      rewards=step_rewards, held_out=held_out, seconds=result.seconds, gains=dict(gains))

