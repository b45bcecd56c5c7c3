"""GRPO's levers compared on one SFT checkpoint, each run measured against its own frozen start.

    python bench/grpo_levers.py configs/tiny.toml                     # every variant, from runs/tiny-sft
    python bench/grpo_levers.py configs/tiny.toml --init runs/tiny-sft --variants default 100x4 100x8-kl0.5

Each variant is one `picochat grpo` run (the config's [grpo] with the variant's keys on top, its
own run folder under --out) from the same checkpoint, on the same prompts. A key "section.key"
sets another section ("train.scalar_lr", "run.seed": a seed also changes the held-out prompts).
GRPO answers the task's [grpo] held_out prompts greedily at step 0 (the frozen policy) and at the
end; the change is paired (same prompts), with its 95% interval. One JSON line per variant on
stdout and appended to OUT/results.jsonl: greedy accuracy start -> end, the change and its
interval, sampled held-out reward start -> end, the sampled training reward in the first and last
quarter of the steps, wall-clock and CPU seconds (on a shared machine wall seconds move with the
load; run two at once with OMP_NUM_THREADS=1 on two cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def _steps(steps: int, prompts: int, **keys) -> dict:
    """steps x prompts per step without the KL term, the held-out evaluation only at the start and the end."""
    return {"steps": steps, "prompts_per_step": prompts, "kl_coef": 0.0, "save_every": steps, **keys}


GSM8K_MIXTURE = {"tasks": ["arith:1.0", "gsm8k:0.5"],
                 "eval.data_dir": "../shared/data"}  # the bundled eval slice has no GSM8K train split

# Measured on configs/tiny.toml (README, "Post-training: SFT and GRPO"); all at temperature 0.7, group 8.
VARIANTS: dict[str, dict] = {
    "default": {},  # the config's own [grpo]: 200 x 8 with kl_coef 0.2
    "lr0": {"lr_scale": 0.0},  # the control: every step, no learning
    "20x4": _steps(20, 4),  # the earlier default
    "20x4-lr0.3": _steps(20, 4, lr_scale=0.3),
    "20x8": _steps(20, 8),
    "20x4-t1.0": _steps(20, 4, temperature=1.0),
    "20x4-iter4clip": _steps(20, 4, iterations_per_batch=4, clip_epsilon=0.2),
    "100x4": _steps(100, 4),
    "200x4": _steps(200, 4),
    "100x4-seed2": _steps(100, 4, **{"run.seed": 2}),
    "100x4-seed3": _steps(100, 4, **{"run.seed": 3}),
    "100x8": _steps(100, 8),
    "200x8": _steps(200, 8),
    "200x8-seed3": _steps(200, 8, **{"run.seed": 3}),
    "100x4-g16": _steps(100, 4, group_size=16),
    "100x4-lr0.05": _steps(100, 4, lr_scale=0.05),
    "100x4-nostd": _steps(100, 4, normalize_std=False),
    "100x4-sequence": _steps(100, 4, loss_normalization="sequence"),
    "100x4-constant": _steps(100, 4, loss_normalization="constant"),
    "100x4-constant-seed2": _steps(100, 4, loss_normalization="constant", **{"run.seed": 2}),
    "100x4-constant-seed3": _steps(100, 4, loss_normalization="constant", **{"run.seed": 3}),
    "200x8-constant": _steps(200, 8, loss_normalization="constant"),
    "100x4-kl0.05": _steps(100, 4, kl_coef=0.05),
    "100x4-kl0.2": _steps(100, 4, kl_coef=0.2),
    "200x4-kl0.2": _steps(200, 4, kl_coef=0.2),
    # Adam moves the residual-mixing scalars by ~lr_scale * scalar_lr per step whatever the gradient's
    # size: without the KL term x0_lambdas drifted from [-0.41, 1.76] to [-0.70, 0.99] in 100 steps
    "100x4-frozen-scalars": _steps(100, 4, **{"train.scalar_lr": 0.0}),
    "100x4-kl0.05-frozen-scalars": _steps(100, 4, kl_coef=0.05, **{"train.scalar_lr": 0.0}),
    "100x4-matrices-only": _steps(100, 4, **{"train.scalar_lr": 0.0, "train.embedding_lr": 0.0,
                                             "train.unembedding_lr": 0.0}),
    "100x8-kl0.2": _steps(100, 8, kl_coef=0.2),
    "100x8-kl0.2-frozen-scalars": _steps(100, 8, kl_coef=0.2, **{"train.scalar_lr": 0.0}),
    "100x8-kl0.5": _steps(100, 8, kl_coef=0.5),
    "100x8-kl0.5-seed2": _steps(100, 8, kl_coef=0.5, **{"run.seed": 2}),
    "100x8-kl0.5-seed3": _steps(100, 8, kl_coef=0.5, **{"run.seed": 3}),
    "100x8-kl1": _steps(100, 8, kl_coef=1.0),
    "100x16-kl0.2": _steps(100, 16, kl_coef=0.2),
    "100x16-kl0.5": _steps(100, 16, kl_coef=0.5),
    "200x8-kl0.5": _steps(200, 8, kl_coef=0.5),
    "200x8-kl0.2": _steps(200, 8, kl_coef=0.2),  # the default, evaluated only at the start and the end
    "200x8-kl0.2-seed2": _steps(200, 8, kl_coef=0.2, **{"run.seed": 2}),
    "200x8-kl0.2-seed3": _steps(200, 8, kl_coef=0.2, **{"run.seed": 3}),
    "200x8-kl0.2-constant": _steps(200, 8, kl_coef=0.2, loss_normalization="constant"),
    "300x8-kl0.2": _steps(300, 8, kl_coef=0.2),
    "20x4-gsm8k-mixture": _steps(20, 4, **GSM8K_MIXTURE),
    "200x8-kl0.2-gsm8k-mixture": _steps(200, 8, kl_coef=0.2, **GSM8K_MIXTURE),
}


def main() -> None:
    from workbench import config as config_module
    from workbench import stages
    from workbench.train.grpo import grpo

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--init", default="", help="checkpoint or run folder to start from (default: [grpo] init_from "
                                                   "or the run's newest SFT checkpoint)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                        help="names from VARIANTS (default: all)")
    parser.add_argument("--out", default="runs/grpo-levers", help="folder for the runs and results.jsonl")
    args = parser.parse_args()

    base = config_module.load(args.config)
    init = args.init or base.grpo.init_from or str(stages.run_dir(base, "sft"))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        settings = {"init_from": str(Path(init).resolve()), **VARIANTS[name]}
        other_sections = {key: settings.pop(key) for key in list(settings) if "." in key}
        cfg = dataclasses.replace(base, run=dataclasses.replace(base.run, out_dir=str(out / name)),
                                  grpo=dataclasses.replace(base.grpo, **settings))
        for key, value in other_sections.items():
            section, _, field = key.partition(".")
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{field: value})})
        started, cpu_started = time.time(), time.process_time()
        result = grpo(cfg, verbose=False)
        start, end = result.held_out.get("start", {}), result.held_out.get("end", {})
        line = {"variant": name, "settings": VARIANTS[name], "seconds": round(time.time() - started),
                "cpu_seconds": round(time.process_time() - cpu_started)}
        if result.stopped:
            line["stopped_at"] = result.step
        quarter = len(result.rewards) // 4  # the sampled training reward, first vs last quarter of the steps
        if quarter:
            line["train_reward"] = [round(sum(part) / quarter, 3) for part in (result.rewards[:quarter],
                                                                               result.rewards[-quarter:])]
        for task, (change, low, high) in result.gains.items():
            line[task] = {"greedy": [start.get(f"{task}_greedy_accuracy"), end.get(f"{task}_greedy_accuracy")],
                          "change": change, "ci95": [low, high], "n": end.get(f"{task}_held_out"),
                          "sampled_reward": [start.get(f"{task}_reward"), end.get(f"{task}_reward")]}
        print(json.dumps(line), flush=True)
        with open(out / "results.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
