"""`picochat eval CHECKPOINT --tasks bpb,arc-easy,arc-challenge,mmlu,hellaswag,gsm8k,humaneval [--limit N]`

CHECKPOINT is a checkpoint folder or a run folder (its newest checkpoint). Every eval file is read
and checked BEFORE the model loads, so a malformed file fails in a second with "FILE:LINE: problem".
Results go to the terminal (a table), to <checkpoint>/evals.json (merged with earlier results, one
entry per task) and to the sibling run folder <run>-eval: "progress" records while running and one
"eval" record per task. The training run's own status.json is never touched (it may be live, or
hold the "stopped at step N; continue with --resume" a user needs).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from workbench import checkpoint_files, runs
from workbench.errors import BadInput
from workbench.evals import common
from workbench.evals.common import TASKS, TaskResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("--tasks", default=None,
                        help=f"comma-separated, or 'all': {','.join(TASKS)} (default: the config's [eval] tasks)")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N examples per task (MMLU: spread across subjects); 0 = all "
                             "(default: the config's [eval] limit)")
    parser.add_argument("--data-dir", default=None,
                        help="folder of the eval data files (default: the config's [eval] data_dir)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--seed", type=int, default=0, help="seed for torch (generation is greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="tokens generated per GSM8K/HumanEval answer (default: [eval] max_new_tokens)")
    parser.add_argument("--bpb-tokens", type=int, default=None,
                        help="validation tokens for bpb (default: the config's [train] eval_tokens)")
    parser.add_argument("--core-bundle", default=None,
                        help="CORE bundle folder (core.yaml, eval_meta_data.csv, eval_data/) for --tasks core "
                             "(default: [eval] core_bundle; none: ARC and HellaSwag from the data dir)")


# ---------------------------------------------------------------------------------------------
# finding things


def resolve_data_dir(value: str | Path) -> Path:
    """An absolute path as is; a relative one from the working directory, else from the repo root."""
    from workbench.config import REPO_DIR

    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    for base in (Path.cwd(), REPO_DIR):
        if (base / path).exists():
            return (base / path).resolve()
    return (REPO_DIR / path).resolve()


def task_path(data_dir: Path, task: str) -> Path:
    return data_dir / TASKS[task][0]


def load_task_data(task: str, data_dir: Path, limit: int | None, core_bundle: Path | None = None) -> list:
    """The task's items (the first `limit`), read and validated from the data dir; for core, the
    CORE tasks (all items: the few shots come from the whole file)."""
    from workbench.evals import core, gsm8k, humaneval, multiple_choice

    if task == "core":
        return core.load(core_bundle, data_dir)
    path = task_path(data_dir, task)
    if task in common.MULTIPLE_CHOICE_TASKS:
        return multiple_choice.select(multiple_choice.load(task, path), limit)
    if task == "gsm8k":
        return common.take(gsm8k.load(path), limit)
    if task == "humaneval":
        return common.take(humaneval.load(path), limit)
    return []


def writer_dir(checkpoint: Path) -> Path | None:
    """Where this eval's progress and records go: <run>-eval beside the checkpoint's run folder (one
    writer per run folder: the training run's status.json stays the training's). None for a
    checkpoint that is not inside a run folder."""
    if checkpoint.parent.name not in ("checkpoints", "int8"):
        return None
    run_dir = checkpoint.parent.parent
    return run_dir.with_name(f"{run_dir.name}-eval")


# ---------------------------------------------------------------------------------------------
# printing


def headline(task: str, result: dict[str, Any]) -> str:
    value = common.headline_score(task, result)
    if value is None:
        return "-"
    if task == "bpb":
        return f"{value:.4f} bpb"
    if task in ("core", "chatcore"):
        return f"{value:.4f}"
    return f"{100 * value:.1f}%"


def extra_text(task: str, result: dict[str, Any]) -> str:
    parts = []
    if result.get("letter_accuracy") is not None:
        parts.append(f"letter {100 * result['letter_accuracy']:.1f}%")
    if result.get("accuracy_sum") is not None:
        parts.append(f"sum-logprob {100 * result['accuracy_sum']:.1f}%")
    if result.get("well_formed_share") is not None:
        parts.append(f"well-formed thought {100 * result['well_formed_share']:.0f}%")
    if result.get("outcomes"):
        parts.append(" ".join(f"{k} {v}" for k, v in sorted(result["outcomes"].items())))
    if task == "bpb" and result.get("tokens"):
        parts.append(f"{result['tokens']} tokens")
    if task in ("core", "chatcore") and isinstance(result.get("tasks"), dict):
        parts.append((f"{result['label']}, " if result.get("label") else "") + "centered: " + " ".join(
            f"{name} {entry['centered']:+.3f}" for name, entry in result["tasks"].items()))
    return ", ".join(parts)


def print_table(results: dict[str, dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("task")
    table.add_column("score", justify="right")
    table.add_column("chance", justify="right")
    table.add_column("n", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("notes")
    for task, result in results.items():
        chance = result.get("chance")
        table.add_row(task, headline(task, result), "-" if chance is None else f"{100 * chance:.0f}%",
                      str(result.get("n", "")), f"{result.get('seconds', 0):.1f}", extra_text(task, result))
    Console().print(table)


# ---------------------------------------------------------------------------------------------
# running


class EvalStopped(Exception):
    """A stop request (control file or SIGTERM) arrived: finish with the tasks already done."""


class Reporter:
    """Progress to the terminal (a rich bar) and, at most every half second, to the run folder, where
    it also picks up a stop request (`picochat stop`, the TUI) between batches."""

    def __init__(self, writer: runs.RunWriter | None, bar=None):
        self.writer, self.bar, self.last = writer, bar, 0.0
        self.task_id = None
        self.task = ""
        self.unit = "examples"
        self.stop_requested = False

    def start(self, task: str, total: int | None, unit: str = "examples") -> None:
        """unit: what total counts (a multiple-choice task scores every choice of every question:
        --limit 50 is 200 choices, not 200 examples)."""
        self.task, self.unit = task, unit
        self.task_id = self.bar.add_task(task, total=total)
        if self.writer:
            self.writer.progress(0, total, unit=unit, task=task)

    def __call__(self, done: int, total: int) -> None:
        self.bar.update(self.task_id, completed=done, total=total)
        now = time.monotonic()
        if self.writer and (now - self.last > 0.5 or done >= total):
            self.last = now
            self.writer.progress(done, total, unit=self.unit, task=self.task)
            if "stop" in self.writer.poll_control():
                self.stop_requested = True
        if self.stop_requested:
            raise EvalStopped(f"stopped during {self.task}")


def run_task(task: str, items: list, checkpoint, device, args, report: Reporter) -> TaskResult:
    from workbench.evals import core, gsm8k, humaneval, multiple_choice

    chat = common.chat_model(checkpoint.meta)
    max_len = checkpoint.config.model.seq_len
    max_new_tokens = args.max_new_tokens or checkpoint.config.eval.max_new_tokens
    if task == "bpb":
        from workbench.evals.bpb import bpb_for_checkpoint

        tokens = args.bpb_tokens or checkpoint.config.train.eval_tokens
        report.start(task, 1, unit="pass")
        value = bpb_for_checkpoint(checkpoint, max_tokens=tokens, device=str(device))
        report(1, 1)
        return TaskResult(task="bpb", accuracy=None, n=tokens, chance=None, details={"bpb": value, "tokens": tokens})
    if task == "core":
        report.start(task, core.row_count(items, args.limit), unit="rows")
        return core.evaluate(checkpoint.model, checkpoint.tokenizer, items, device, max_len, args.limit, report)
    if task in common.MULTIPLE_CHOICE_TASKS:
        total = sum(len(item.choices) for item in items) + (len(items) if chat else 0)
        report.start(task, total, unit=f"choices of {len(items)} questions")
        return multiple_choice.evaluate(task, checkpoint.model, checkpoint.tokenizer, items, device, max_len,
                                        chat, report)
    from workbench.engine import Engine

    engine = Engine(checkpoint.model, checkpoint.tokenizer, device=device)
    if task == "gsm8k":
        report.start(task, len(items))
        return gsm8k.evaluate(engine, checkpoint.tokenizer, items, chat, max_new_tokens, args.seed, report)
    report.start(task, 2 * len(items), unit=f"steps ({len(items)} problems: answer, test)")
    return humaneval.evaluate(engine, checkpoint.tokenizer, items, chat, max_new_tokens, args.seed, report)


def run(args: argparse.Namespace) -> int:
    path = checkpoint_files.resolve_checkpoint(args.checkpoint)
    config = checkpoint_files.read_checkpoint_config(path)
    tasks = common.parse_tasks(args.tasks if args.tasks is not None else config.eval.tasks)
    limit = args.limit if args.limit is not None else config.eval.limit
    if limit < 0:
        raise BadInput(f"--limit must be >= 0, got {limit}")
    data_dir = resolve_data_dir(args.data_dir or config.eval.data_dir)
    bundle = args.core_bundle if args.core_bundle is not None else config.eval.core_bundle
    core_bundle = resolve_data_dir(bundle) if bundle else None
    args.limit = limit

    needs_data_dir = [task for task in tasks if task not in ("bpb", "chatcore") and not (task == "core" and core_bundle)]
    if not data_dir.is_dir() and needs_data_dir:
        source = "--data-dir" if args.data_dir else f"[eval] data_dir of {path / 'config.json'}; pass --data-dir"
        raise BadInput(f"{data_dir}: eval data folder not found ({source})")
    # Every eval file (and the bpb validation data) is checked before the (slow) model load.
    data = {task: load_task_data(task, data_dir, limit, core_bundle) for task in tasks}
    if "bpb" in tasks:
        from workbench.data.shards import list_shards

        if not (list_shards(config.data_dir, "val") or list_shards(config.data_dir, "train")):
            raise BadInput(f"{config.data_dir}: no prepared data for bpb (run `picochat prepare CONFIG` "
                           f"with this checkpoint's config first, or leave bpb out of --tasks)")

    import torch

    from workbench.checkpoint import load_checkpoint
    from workbench.train.common import resolve_device

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    checkpoint = load_checkpoint(path, device=device)
    step = int(checkpoint.meta.get("step", 0))
    folder = writer_dir(path)
    writer = runs.RunWriter(folder, "eval") if folder else None
    if writer:
        writer.poll_control()  # commands left over from an earlier worker are not meant for this one
        writer.write_status(state="running", step=step, message=f"eval of {path.name}: {', '.join(tasks)}")
        writer.event(f"eval of {path} on {', '.join(tasks)}", checkpoint=str(path), limit=limit)
    print(f"eval of {path} (step {step}, stage {checkpoint.meta.get('stage', '?')}, {device}) on "
          f"{', '.join(tasks)}" + (f", first {limit} examples each" if limit else ""), file=sys.stderr)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: dict[str, dict[str, Any]] = {}
    report = Reporter(writer)

    def on_sigterm(signum, frame):  # `picochat stop` escalates to SIGTERM: end cleanly, keep results
        report.stop_requested = True

    main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    stopped = ""
    try:
        with Progress(TextColumn("{task.description:>14}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=False) as bar:
            report.bar = bar
            for number, task in enumerate(tasks, start=1):
                started = time.time()
                if task == "chatcore":  # from its five tasks, which ran before it
                    from workbench.evals.core import chatcore

                    result = chatcore(results)
                    if result is None:
                        print("chatcore: skipped (one of its tasks has no result)", file=sys.stderr)
                        continue
                else:
                    result = run_task(task, data[task], checkpoint, device, args, report)
                entry = result.to_dict()
                entry.update(step=step, limit=limit, seconds=round(time.time() - started, 2),
                             time=round(time.time(), 1), device=str(device))
                if TASKS[task][0]:
                    entry["data"] = str(task_path(data_dir, task))
                elif task == "core":
                    entry["data"] = str(core_bundle) if core_bundle else str(data_dir)
                results[task] = entry
                checkpoint_files.merge_evals(path, {task: entry})
                if writer:
                    score = common.headline_score(task, entry)
                    fields = {key: value for key, value in entry.items()
                              if isinstance(value, (int, float, str)) and key != "step"}
                    fields.update({task: score, "task": task, "checkpoint": str(path)})
                    writer.log("eval", step=step, **fields)
                    writer.write_status(message=f"eval: {number}/{len(tasks)} tasks done")
                if report.stop_requested and number < len(tasks):
                    raise EvalStopped(f"stopped after {task}")
    except EvalStopped as stop:
        stopped = str(stop)
    except BaseException as error:
        if writer:
            writer.finish("failed", f"{type(error).__name__}: {error}"[:300])
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
    summary = ", ".join(f"{task} {headline(task, result)}" for task, result in results.items())
    if stopped:
        summary = f"{stopped}; " + (summary or "no task finished")
        print(f"eval {stopped} (stop requested); finished tasks are saved", file=sys.stderr)
    if writer:
        writer.finish("stopped" if stopped else "done", summary)
    # RUN/step_N, or RUN/int8/step_N for an INT8 copy: the title says which was evaluated
    label = path.name if path.parent.name == "checkpoints" else f"{path.parent.name}/{path.name}"
    print_table(results, f"{path.parent.parent.name}/{label}")
    print(f"results: {path / 'evals.json'}" + (f"; progress and records: {folder / 'metrics.jsonl'}" if folder else ""))
    return 0
