"""`picochat speedrun CONFIG [--skip-grpo]`: every stage in order, one report at the end.

    prepare -> tokenizer -> pretrain -> sft -> grpo -> eval (each stage's last checkpoint) -> report

The eval stage runs the config's [eval] tasks at its limit on the last checkpoint of pretraining,
SFT and GRPO alike, so the report shows base -> SFT -> RL side by side (nanochat's report card).
`--until pretrain` (or sft) stops after that stage: `make train` is the speedrun up to pretraining.

Each stage runs in this process through the same function its own verb calls, and writes its run
folder exactly as `picochat <stage>` would (so the TUI shows a speedrun like any other run). A
re-run is idempotent: a stage whose output is already complete is skipped with a note, and a
training stage that stopped part-way (a stop command, ctrl+c, a crash) continues with --resume.
The summary at the end gives each stage's time and headline figures, then the report's path.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import stages
from workbench.errors import BadInput


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config (TOML): every section is used")
    parser.add_argument("--skip-grpo", action="store_true", help="stop post-training after SFT")
    parser.add_argument("--until", choices=("pretrain", "sft", "grpo"), default="grpo",
                        help="the last training stage to run; its checkpoints (and earlier ones) are evaluated")
    parser.add_argument("--chat-checkpoint", action="store_true",
                        help="print the checkpoint `make chat` talks to (the newest of the run's most "
                             "post-trained stage: grpo, then sft, then pretrain) and exit")


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "resumed" | "skipped"
    seconds: float = 0.0
    note: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    from workbench import config as config_module

    cfg = config_module.load(args.config)
    if args.chat_checkpoint:
        print(chat_checkpoint(cfg))
        return 0
    until = "sft" if args.skip_grpo and args.until == "grpo" else args.until
    try:
        report_path, results = speedrun(cfg, until=until)
    except StageStopped as stopped:
        print(f"picochat speedrun: {stopped}", file=sys.stderr)
        return 1
    print_summary(results)
    print(f"report: {report_path}")
    return 0


class StageStopped(Exception):
    """A training stage was stopped (stop command, SIGTERM) before its last step."""


def chat_checkpoint(cfg) -> Path:
    """The checkpoint to chat with for a config: the newest of its most post-trained stage (GRPO,
    then SFT, then pretraining), since a chat model answers turns and a base model only continues text."""
    from workbench import runs

    for stage in reversed(stages.TRAINING_STAGES):
        found = runs.list_checkpoints(stages.run_dir(cfg, stage))
        if found:
            return found[-1]
    raise BadInput(f"{cfg.out_dir}: no checkpoint yet (train first: `make train CONFIG=...` or "
                   f"`picochat speedrun CONFIG`)")


def _heading(text: str) -> None:
    print(f"\n=== speedrun: {text} ===", flush=True)


def speedrun(cfg, until: str = "grpo", verbose: bool = True) -> tuple[Path, list[StageResult]]:
    """Run every stage per the config up to the training stage `until` (pretrain, sft or grpo), then
    evaluate each trained stage's last checkpoint; returns (report.md path, per-stage results). A
    stage that stages.state finds done is skipped, a partial training stage resumed."""
    results: list[StageResult] = []
    started = time.time()

    # 1. data
    _heading("prepare")
    if stages.state(cfg, "prepare") == "done":
        results.append(StageResult("prepare", "skipped", note=f"data already prepared in {cfg.data_dir}"))
    else:
        from workbench.data.prepare import prepare, summary_line
        from workbench.runs import RunWriter

        t = time.time()
        manifest = prepare(cfg, RunWriter(cfg.out_dir, "prepare"))
        results.append(StageResult("prepare", "ran", time.time() - t, summary_line(manifest)))
    _say(results[-1])

    # 2. tokenizer
    _heading("tokenizer")
    if stages.state(cfg, "tokenizer") == "done":
        results.append(StageResult("tokenizer", "skipped", note=f"tokenizer already trained: {cfg.tokenizer_path}"))
    else:
        from workbench.runs import RunWriter
        from workbench.tokenizer import train_from_config

        t = time.time()
        record = train_from_config(cfg, RunWriter(cfg.out_dir, "tokenizer"), verbose=verbose)
        results.append(StageResult("tokenizer", "ran", time.time() - t,
                                   f"vocab {record['vocab_size']}",
                                   {"chars_per_token": round(record["chars_per_token"], 3)}))
    _say(results[-1])

    # 3-5. pretrain, sft, grpo (up to `until`)
    train = {"pretrain": _pretrain, "sft": _sft, "grpo": _grpo}
    for stage in stages.trained_stages(until):
        _heading(stage)
        results.append(_training_stage(cfg, stage, train[stage], verbose))
        _say(results[-1])

    # 6. eval: every trained stage's last checkpoint on the same tasks (base -> SFT -> RL)
    for stage in stages.trained_stages(until):
        _heading(f"eval of the {stage} checkpoint")
        results.append(_eval(cfg, stage, verbose))
        _say(results[-1])

    # 7. the report
    _heading("report")
    from workbench.evals.report import write_report

    report_path = write_report(cfg.out_dir)
    results.append(StageResult("report", "ran", note=str(report_path)))
    results.append(StageResult("total", "", time.time() - started))
    return report_path, results


def _training_stage(cfg, name: str, train_fn, verbose: bool) -> StageResult:
    run_dir, total_steps = stages.run_dir(cfg, name), stages.total_steps(cfg, name)
    state = stages.training_state(run_dir, total_steps)
    if state == "done":
        return StageResult(name, "skipped", note=f"already trained to step {total_steps} in {run_dir}")
    t = time.time()
    figures = train_fn(cfg, state == "partial", verbose)
    if figures.pop("stopped", False):
        raise StageStopped(f"{name} stopped before its last step ({run_dir}); run the speedrun again to resume it")
    return StageResult(name, "resumed" if state == "partial" else "ran", time.time() - t, str(run_dir), figures)


def _pretrain(cfg, resume: bool, verbose: bool) -> dict[str, Any]:
    from workbench.train.pretrain import pretrain

    result = pretrain(cfg, resume=resume, verbose=verbose)
    return {"stopped": result.stopped, "val_bpb": _round(result.best_val_bpb), "loss": _round(result.last_loss),
            "tokens": result.tokens}


def _sft(cfg, resume: bool, verbose: bool) -> dict[str, Any]:
    from workbench import runs
    from workbench.train.sft import sft

    result = sft(cfg, resume=resume, verbose=verbose)
    evals = runs.read_metrics(stages.run_dir(cfg, "sft"), kind="eval")
    figures = {"stopped": result.stopped, "loss": _round(result.last_loss)}
    if evals:
        first, last = evals[0], evals[-1]
        for key in ("end_rate", "accuracy", "val_bpb"):
            if key in last:
                figures[key] = f"{_round(first.get(key))} -> {_round(last[key])}"
    return figures


def _grpo(cfg, resume: bool, verbose: bool) -> dict[str, Any]:
    from workbench.train.grpo import grpo

    result = grpo(cfg, resume=resume, verbose=verbose)
    figures: dict[str, Any] = {"stopped": result.stopped}
    if result.rewards:  # per-step rewards are noisy: compare the first and last quarter of the run
        quarter = max(1, len(result.rewards) // 4)
        first, last = result.rewards[:quarter], result.rewards[-quarter:]
        figures[f"reward_mean (first/last {quarter} steps)"] = (f"{_round(sum(first) / quarter)} -> "
                                                                 f"{_round(sum(last) / quarter)}")
    start, end = result.held_out.get("start"), result.held_out.get("end")
    key = f"{cfg.grpo.task}_reward"
    if start and end:
        figures[f"held-out {key}"] = f"{_round(start[key])} -> {_round(end[key])}"
    return figures


def _eval(cfg, stage: str, verbose: bool) -> StageResult:
    """The eval API on the newest checkpoint of a training stage, with [eval] tasks and limit;
    skipped when that checkpoint's evals.json already has every task at this limit."""
    from workbench import checkpoint_files
    from workbench.evals.common import parse_tasks

    name = f"eval/{stage}"
    checkpoint = checkpoint_files.newest(stages.run_dir(cfg, stage))
    tasks = parse_tasks(cfg.eval.tasks)
    if stages.is_evaluated(checkpoint, tasks, cfg.eval.limit):
        return StageResult(name, "skipped", note=f"{checkpoint} already evaluated",
                           figures=_scores(checkpoint_files.read_evals(checkpoint), tasks))
    from workbench.evals import api, cli

    t = time.time()
    # the data folder of the config being run (a checkpoint's frozen copy may predate an edit)
    evaluation = api.evaluate(checkpoint, tasks, limit=cfg.eval.limit, device=cfg.run.device,
                              data_dir=cfg.resolve_path(cfg.eval.data_dir),
                              core_bundle=cfg.resolve_path(cfg.eval.core_bundle) if cfg.eval.core_bundle else None,
                              progress=verbose)
    if verbose:
        cli.print_results(evaluation)
    return StageResult(name, "ran", time.time() - t, str(checkpoint),
                       _scores(checkpoint_files.read_evals(checkpoint), tasks))


def _scores(results: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    from workbench.evals.common import headline_score

    return {task: _round(headline_score(task, results.get(task) or {})) for task in tasks}


def _round(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def _say(result: StageResult) -> None:
    if result.status == "skipped":
        print(f"speedrun: {result.name}: skipped ({result.note})", flush=True)


def print_summary(results: list[StageResult]) -> None:
    from workbench.runs import format_duration

    print("\nspeedrun summary")
    for result in results:
        figures = ", ".join(f"{key} {value}" for key, value in result.figures.items() if value is not None)
        parts = [part for part in (result.status, format_duration(result.seconds) if result.seconds else "",
                                   figures, result.note if result.status == "skipped" else "") if part]
        print(f"  {result.name:<13} " + " | ".join(parts))
    evals = [result for result in results if result.name.startswith("eval/")]
    if len(evals) > 1:  # the same tasks on each stage's last checkpoint
        print("\n" + " -> ".join(result.name.removeprefix("eval/") for result in evals))
        for task in evals[0].figures:
            print(f"  {task:<13} " + " -> ".join(str(result.figures.get(task, "-")) for result in evals))
