"""The tasks GRPO trains on, by name ([grpo] task, or a mixture [grpo] tasks = ["arith:1.0",
"gsm8k:0.5"]): "arith", "tool" (synthetic), "gsm8k" and "arc" (files under [eval] data_dir)."""

from __future__ import annotations

from workbench.errors import BadInput
from workbench.tasks import arc, arith, gsm8k, tool
from workbench.tasks.base import Task, mixed_task


def build_task(cfg) -> Task:
    """The [grpo] task, or the mixture of [grpo] tasks. Files come from [eval] data_dir (the shared
    data folder)."""
    specs = [spec.partition(":") for spec in cfg.grpo.tasks] or [(cfg.grpo.task, "", "")]
    tasks = {name: single_task(cfg, name) for name, _, _ in specs}
    if len(tasks) == 1:
        return next(iter(tasks.values()))
    weights = {}
    for name, _, weight in specs:  # config.py checked names and weights
        weights[name] = weights.get(name, 0.0) + (float(weight) if weight else 1.0)
    return mixed_task(tasks, weights, cfg.run.seed)


def single_task(cfg, name: str) -> Task:
    seed, held_out = cfg.run.seed, cfg.grpo.held_out
    if name == "arith":
        return arith.training_task(seed, held_out)
    if name == "tool":
        return tool.training_task(seed, held_out)
    data_dir = cfg.resolve_path(cfg.eval.data_dir)
    if name == "gsm8k":
        return gsm8k.training_task(data_dir, seed, held_out)
    if name == "arc":
        return arc.training_task(data_dir, seed, held_out)
    raise BadInput(f"[grpo] task: unknown task {name!r} (arith, gsm8k, arc, tool)")
