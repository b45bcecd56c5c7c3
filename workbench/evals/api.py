"""Evaluating a checkpoint, as a function: `evaluate(checkpoint, tasks, limit=..., data_dir=...)`.
`picochat eval` is a thin wrapper over it (arguments in, a table out) and speedrun calls it directly.

CHECKPOINT is a checkpoint folder or a run folder (its newest checkpoint). Every eval file is read
and checked BEFORE the model loads, so a malformed file fails in a second with "FILE:LINE: problem".
Results go to <checkpoint>/evals.json (merged with earlier results, one entry per task) and to the
sibling run folder <run>-eval (stages.eval_dir): "progress" records while running and one "eval"
record per task. The training run's own status.json is never touched (it may be live, or hold the
"stopped at step N; continue with --resume" a user needs).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import checkpoint_files, runs, stages
from workbench.errors import BadInput
from workbench.evals import common
from workbench.evals.common import TASKS, TaskResult


@dataclass
class Evaluation:
    """What evaluate() did: each task's evals.json entry, in the order run."""

    checkpoint: Path
    results: dict[str, dict[str, Any]]
    stopped: str  # why it ended before its last task ("" when it ran them all)
    records: Path | None  # the RUN-eval folder holding its progress and records (None: not in a run folder)


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
    from workbench.evals import core, multiple_choice
    from workbench.tasks import gsm8k, humaneval

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


def headline(task: str, result: dict[str, Any]) -> str:
    """A result's headline score as text: "1.2345 bpb", a CORE figure, or "42.0%"."""
    value = common.headline_score(task, result)
    if value is None:
        return "-"
    if task == "bpb":
        return f"{value:.4f} bpb"
    if task in ("core", "chatcore"):
        return f"{value:.4f}"
    return f"{100 * value:.1f}%"


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


@dataclass
class _Budget:
    """How much of each task to run: examples (0 = all), generated tokens, bpb tokens, seed."""

    limit: int
    max_new_tokens: int
    bpb_tokens: int
    seed: int


def run_task(task: str, items: list, checkpoint, device, budget: _Budget, report: Reporter) -> TaskResult:
    from workbench.evals import core, gsm8k, humaneval, multiple_choice

    chat = common.chat_model(checkpoint.meta)
    max_len = checkpoint.config.model.seq_len
    if task == "bpb":
        from workbench.evals.bpb import bpb_for_checkpoint

        report.start(task, 1, unit="pass")
        value = bpb_for_checkpoint(checkpoint, max_tokens=budget.bpb_tokens, device=str(device))
        report(1, 1)
        return TaskResult(task="bpb", accuracy=None, n=budget.bpb_tokens, chance=None,
                          details={"bpb": value, "tokens": budget.bpb_tokens})
    if task == "core":
        report.start(task, core.row_count(items, budget.limit), unit="rows")
        return core.evaluate(checkpoint.model, checkpoint.tokenizer, items, device, max_len, budget.limit, report)
    if task in common.MULTIPLE_CHOICE_TASKS:
        total = sum(len(item.choices) for item in items) + (len(items) if chat else 0)
        report.start(task, total, unit=f"choices of {len(items)} questions")
        return multiple_choice.evaluate(task, checkpoint.model, checkpoint.tokenizer, items, device, max_len,
                                        chat, report)
    from workbench.engine import Engine

    engine = Engine(checkpoint.model, checkpoint.tokenizer, device=device)
    if task == "gsm8k":
        report.start(task, len(items))
        return gsm8k.evaluate(engine, checkpoint.tokenizer, items, chat, budget.max_new_tokens, budget.seed, report)
    report.start(task, 2 * len(items), unit=f"steps ({len(items)} problems: answer, test)")
    return humaneval.evaluate(engine, checkpoint.tokenizer, items, chat, budget.max_new_tokens, budget.seed, report)


def evaluate(checkpoint: str | Path, tasks: str | list[str] | None = None, *, limit: int | None = None,
             data_dir: str | Path | None = None, core_bundle: str | Path | None = None, device: str = "auto",
             seed: int = 0, max_new_tokens: int | None = None, bpb_tokens: int | None = None,
             progress: bool = True) -> Evaluation:
    """Evaluate a checkpoint (or a run folder's newest) on `tasks` (names, comma-separated text or
    'all'). What is left None comes from the checkpoint's config: [eval] tasks, limit (0 = all),
    data_dir, core_bundle (None: the config's; "": none) and max_new_tokens, [train] eval_tokens for
    bpb. progress: show a progress bar on the terminal. A stop request ends it after the task under
    way (Evaluation.stopped says so); the finished tasks are saved either way."""
    path = checkpoint_files.resolve_checkpoint(checkpoint)
    config = checkpoint_files.read_checkpoint_config(path)
    tasks = common.parse_tasks(tasks if tasks is not None else config.eval.tasks)
    limit = limit if limit is not None else config.eval.limit
    if limit < 0:
        raise BadInput(f"--limit must be >= 0, got {limit}")
    folder = resolve_data_dir(data_dir or config.eval.data_dir)
    bundle = core_bundle if core_bundle is not None else config.eval.core_bundle
    bundle_dir = resolve_data_dir(bundle) if bundle else None
    budget = _Budget(limit, max_new_tokens or config.eval.max_new_tokens, bpb_tokens or config.train.eval_tokens,
                     seed)

    needs_data_dir = [task for task in tasks if task not in ("bpb", "chatcore") and not (task == "core" and bundle_dir)]
    if not folder.is_dir() and needs_data_dir:
        source = "--data-dir" if data_dir else f"[eval] data_dir of {path / 'config.json'}; pass --data-dir"
        raise BadInput(f"{folder}: eval data folder not found ({source})")
    # Every eval file (and the bpb validation data) is checked before the (slow) model load.
    data = {task: load_task_data(task, folder, limit, bundle_dir) for task in tasks}
    if "bpb" in tasks:
        from workbench.data.shards import list_shards

        if not (list_shards(config.data_dir, "val") or list_shards(config.data_dir, "train")):
            raise BadInput(f"{config.data_dir}: no prepared data for bpb (run `picochat prepare CONFIG` "
                           f"with this checkpoint's config first, or leave bpb out of --tasks)")

    import torch

    from workbench.checkpoint import load_checkpoint
    from workbench.train.common import resolve_device

    device = resolve_device(device)
    torch.manual_seed(seed)
    loaded = load_checkpoint(path, device=device)
    step = int(loaded.meta.get("step", 0))
    records = stages.eval_dir(path)
    writer = runs.RunWriter(records, "eval") if records else None
    if writer:
        writer.poll_control()  # commands left over from an earlier worker are not meant for this one
        writer.write_status(state="running", step=step, message=f"eval of {path.name}: {', '.join(tasks)}")
        writer.event(f"eval of {path} on {', '.join(tasks)}", checkpoint=str(path), limit=limit)
    print(f"eval of {path} (step {step}, stage {loaded.meta.get('stage', '?')}, {device}) on "
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
                      TimeElapsedColumn(), transient=False, disable=not progress) as bar:
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
                    result = run_task(task, data[task], loaded, device, budget, report)
                entry = result.to_dict()
                entry.update(step=step, limit=limit, seconds=round(time.time() - started, 2),
                             time=round(time.time(), 1), device=str(device))
                if TASKS[task][0]:
                    entry["data"] = str(task_path(folder, task))
                elif task == "core":
                    entry["data"] = str(bundle_dir) if bundle_dir else str(folder)
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
    return Evaluation(path, results, stopped, records)
