"""The pipeline in one place: its stages in order, the run folder each one writes, whether a stage
is done for a config, which stage comes next, and the report's columns. speedrun, the TUI's
launcher, the report and sweep read it, so they agree on all of these. No torch here (the TUI
imports it).

    prepare -> tokenizer -> pretrain -> sft -> grpo -> eval -> report

    runs/NAME        prepare, tokenizer, pretrain (and report.md)
    runs/NAME-sft    sft
    runs/NAME-grpo   grpo
    runs/NAME-eval   the eval of runs/NAME's checkpoints (an eval of runs/X writes runs/X-eval)
"""

from __future__ import annotations

from pathlib import Path

from workbench import checkpoint_files
from workbench.evals.common import parse_tasks

STAGES = ("prepare", "tokenizer", "pretrain", "sft", "grpo", "eval", "report")
TRAINING_STAGES = ("pretrain", "sft", "grpo")
WORKER_STAGES = STAGES[:-1]  # a worker runs each of these; the report is a page written from their folders
REPORT_COLUMNS = TRAINING_STAGES  # the report's main table: one column per training stage
FOLDER_SUFFIXES = {"sft": "-sft", "grpo": "-grpo", "eval": "-eval"}  # the rest write the run's own folder


# ---- folders ----


def folder(run_dir: str | Path, stage: str) -> Path:
    """The folder `stage` writes for the run folder run_dir: run_dir itself, or a sibling with the
    stage's suffix (runs/NAME -> runs/NAME-sft)."""
    run_dir = Path(run_dir)
    suffix = FOLDER_SUFFIXES.get(stage, "")
    return run_dir.with_name(run_dir.name + suffix) if suffix else run_dir


def run_dir(cfg, stage: str) -> Path:
    """The folder `stage` of this config writes."""
    return folder(cfg.out_dir, stage)


def eval_dir(checkpoint: Path) -> Path | None:
    """Where `picochat eval` of a checkpoint writes its progress and records: RUN-eval beside the
    checkpoint's run folder (one writer per run folder: the training's status.json stays the
    training's). None for a checkpoint that is not inside a run folder."""
    if checkpoint.parent.name not in ("checkpoints", "int8"):
        return None
    return folder(checkpoint.parent.parent, "eval")


def split_folder(path: Path) -> tuple[Path, str]:
    """(the run folder, the stage) of a stage's folder: runs/NAME-sft -> (runs/NAME, "sft"); a
    folder without a stage suffix -> (itself, "")."""
    for stage, suffix in FOLDER_SUFFIXES.items():
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.with_name(path.name[: -len(suffix)]), stage
    return path, ""


# ---- done? next? ----


def newest_step(run_dir: str | Path) -> int | None:
    """Step of the newest checkpoint in a run folder, None when there is none."""
    newest = checkpoint_files.newest(run_dir)
    return None if newest is None else checkpoint_files.read_meta(newest).get("step", 0)


def configured_steps(cfg, stage: str) -> int:
    """The steps a training stage's section of the config asks for."""
    return {"pretrain": cfg.train.steps, "sft": cfg.sft.steps, "grpo": cfg.grpo.steps}[stage]


def total_steps(cfg, stage: str) -> int:
    """The step a training stage ends at: the config's steps, or for pretraining under a time
    budget the steps its run fixed from the measured speed (in its checkpoints' meta.json)."""
    if stage == "pretrain" and cfg.train.time_budget:
        newest = checkpoint_files.newest(run_dir(cfg, stage))
        meta = checkpoint_files.read_meta(newest) if newest is not None else {}
        if meta.get("time_budget") and meta.get("total_steps"):
            return meta["total_steps"]
    return configured_steps(cfg, stage)


def training_state(folder: str | Path, total: int) -> str:
    """"done" (its newest checkpoint reached step `total`), "partial" (resume it) or "new"."""
    step = newest_step(folder)
    if step is None:
        return "new"
    return "done" if step >= total else "partial"


def is_evaluated(checkpoint: Path | None, tasks: list[str], limit: int) -> bool:
    """Whether the checkpoint's evals.json holds every task, each run at this limit."""
    if checkpoint is None:
        return False
    done = checkpoint_files.read_evals(checkpoint)
    return all(isinstance(done.get(task), dict) and done[task].get("limit") == limit for task in tasks)


def trained_stages(until: str = "grpo") -> tuple[str, ...]:
    """The training stages a pipeline that trains up to `until` runs (and evaluates)."""
    return TRAINING_STAGES[: TRAINING_STAGES.index(until) + 1]


def state(cfg, stage: str, until: str = "grpo") -> str:
    """"done", "partial" or "new": what the config's run folders hold of a stage. Eval is done when
    the newest checkpoint of every trained stage (up to `until`) has the config's [eval] tasks at
    its limit; the report when report.md exists."""
    if stage == "prepare":
        return "done" if (cfg.data_dir / "manifest.json").is_file() else "new"
    if stage == "tokenizer":
        return "done" if Path(cfg.tokenizer_path).is_file() else "new"
    if stage in TRAINING_STAGES:
        return training_state(run_dir(cfg, stage), total_steps(cfg, stage))
    if stage == "eval":
        tasks = parse_tasks(cfg.eval.tasks)
        evaluated = [is_evaluated(checkpoint_files.newest(run_dir(cfg, trained)), tasks, cfg.eval.limit)
                     for trained in trained_stages(until)]
        return "done" if all(evaluated) else "partial" if any(evaluated) else "new"
    if stage == "report":
        return "done" if (run_dir(cfg, stage) / "report.md").is_file() else "new"
    raise ValueError(f"{stage}: not a stage (one of {', '.join(STAGES)})")


def next_stage(cfg, until: str = "grpo") -> str | None:
    """The first stage a worker still has to run for this config (a partial training stage: resume
    it), training up to `until`; None when every one is done."""
    skipped = set(TRAINING_STAGES) - set(trained_stages(until))
    return next((stage for stage in WORKER_STAGES if stage not in skipped and state(cfg, stage, until) != "done"),
                None)
