"""GRPO's levers compared on one SFT checkpoint, each run measured against its own frozen start.

    python bench/grpo_levers.py configs/tiny.toml                     # every variant, from runs/tiny-sft
    python bench/grpo_levers.py configs/tiny.toml --init runs/tiny-sft --variants default temp0.7 iter4clip

Each variant is one `picochat grpo` run (the config's [grpo] with the variant's keys on top, its
own run folder under --out) from the same checkpoint, on the same prompts. GRPO answers the task's
[grpo] held_out prompts greedily at step 0 (the frozen policy) and at the end; the change is
paired (same prompts), with its 95% interval. One JSON line per variant on stdout and appended to
OUT/results.jsonl: greedy accuracy start -> end, the change and its interval, sampled held-out
reward start -> end, and the wall-clock seconds (on a shared machine they move with the load).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

VARIANTS: dict[str, dict] = {
    "default": {},
    "lr0": {"lr_scale": 0.0},  # the control: every step, no learning
    "lr0.3": {"lr_scale": 0.3},
    "prompts8": {"prompts_per_step": 8},
    "nostd": {"normalize_std": False},
    "sequence": {"loss_normalization": "sequence"},
    "constant": {"loss_normalization": "constant"},
    "kl0.05": {"kl_coef": 0.05},
    "temp0.7": {"temperature": 0.7},
    "iter4clip": {"iterations_per_batch": 4, "clip_epsilon": 0.2},
    "temp0.7-iter4clip": {"temperature": 0.7, "iterations_per_batch": 4, "clip_epsilon": 0.2},
}


def main() -> None:
    from workbench import config as config_module
    from workbench import stages
    from workbench.train.grpo import grpo

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--init", default="", help="checkpoint or run folder to start from (default: [grpo] init_from "
                                                   "or the run's newest SFT checkpoint)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="runs/grpo-levers", help="folder for the runs and results.jsonl")
    args = parser.parse_args()

    base = config_module.load(args.config)
    init = args.init or base.grpo.init_from or str(stages.run_dir(base, "sft"))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        settings = {"init_from": str(Path(init).resolve()), **VARIANTS[name]}
        cfg = dataclasses.replace(base, run=dataclasses.replace(base.run, out_dir=str(out / name)),
                                  grpo=dataclasses.replace(base.grpo, **settings))
        started = time.time()
        result = grpo(cfg, verbose=False)
        start, end = result.held_out.get("start", {}), result.held_out.get("end", {})
        line = {"variant": name, "settings": VARIANTS[name], "seconds": round(time.time() - started)}
        for task, (change, low, high) in result.gains.items():
            line[task] = {"greedy": [start.get(f"{task}_greedy_accuracy"), end.get(f"{task}_greedy_accuracy")],
                          "change": change, "ci95": [low, high], "n": end.get(f"{task}_held_out"),
                          "sampled_reward": [start.get(f"{task}_reward"), end.get(f"{task}_reward")]}
        print(json.dumps(line), flush=True)
        with open(out / "results.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
