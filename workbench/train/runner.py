"""The stage runner: what every training stage (pretrain, sft, grpo) does around its loop.

The CLI half: the flags every training verb takes (config, --resume, --detach, and --budget
where a stage has one), and `launch`, which either relaunches the command as a detached worker
(after checking its inputs here, so a mistake fails in the terminal, not in a log file) or trains
in this process and says how to continue a stopped run.

The worker half, in the order a stage (pretrain.py, sft.py, grpo.py) uses it:

    with StageRun(cfg, "sft") as run:          # releases the run folder's lock on the way out
        newest = guard(cfg, "sft", resume, worker=True)   # refuse a running worker or an overwrite
        ...build the model, the optimizer, a loop.TrainState...
        if newest: meta = restore(state, checkpoint)      # optimizer, step, tokens, RNG states
        state.writer = run.open_writer(total_steps, cfg)  # RunWriter + config.toml (rank 0)
        result = loop.train(state, steps)
        run.finish(result, "what the stage did")          # "done" or "stopped"

An exception anywhere inside the `with` finishes an opened RunWriter "failed" with one line (the
error's message), and the lock is released even when the stage failed before it had a writer.
Post-training stages (sft, grpo) also share `start_checkpoint` (where to start from),
`single_process` and `stage_config`.

No torch at module level: the CLI builds every verb's parser from add_arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench import stages
from workbench.errors import BadInput
from workbench.runs import RunWriter, freeze_config, unlock_run_folder

# ---------------------------------------------------------------------------------------------
# the CLI half


def add_arguments(parser: argparse.ArgumentParser, reads: str, folder: str, resume_from: str,
                  budget_help: str | None = None) -> None:
    """A training verb's flags. reads: the config sections it reads; folder: its run folder as the
    help shows it (RUN, RUN-sft); budget_help: the --budget flag's help, None for a stage without one."""
    parser.add_argument("config", help=f"run config (TOML); reads {reads}")
    parser.add_argument("--resume", action="store_true", help=f"continue from the newest checkpoint of {resume_from}")
    parser.add_argument("--detach", action="store_true",
                        help=f"run in the background (log in {folder}/train.log) and return at once")
    if budget_help is not None:
        parser.add_argument("--budget", metavar="DURATION", help=budget_help)


def check_budget(budget: str | None) -> str | None:
    """--budget, checked like [train] time_budget."""
    from workbench.config import parse_duration

    if budget is not None:
        try:
            parse_duration(budget)
        except ValueError:
            raise BadInput(f"--budget: use a duration like 90s, 10m or 1h, got {budget!r}") from None
    return budget


def launch(args: argparse.Namespace, verb: str, run_dir: Path, check: Callable[[], Any],
           train: Callable[[], Any]) -> int:
    """`picochat VERB CONFIG ...`: with --detach, check() the inputs here and start the same command
    as a background worker logging to run_dir/train.log; else train() in this process."""
    from workbench import runs

    if args.detach:
        check()
        argv = [str(Path(args.config).resolve())] + (["--resume"] if args.resume else [])
        argv += ["--budget", args.budget] if getattr(args, "budget", None) else []
        return runs.relaunch_detached(verb, argv, run_dir)
    result = train()
    if result.stopped:
        print(f"{verb} stopped at step {result.step}; continue with: picochat {verb} {args.config} --resume")
    return 0


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


# ---------------------------------------------------------------------------------------------
# the worker half


def guard(cfg, stage: str, resume: bool, worker: bool = False, is_main: bool = True) -> Path | None:
    """The stage's run folder before anything is trained (checkpoint_files.guard_run_folder):
    refuse when a worker of this stage runs there, or when checkpoints exist and resume is off.
    The worker (not the launcher of a detached one) takes the folder's lock here; under torchrun
    only rank 0 checks for a running worker (it may have written status.json already).
    Returns the newest checkpoint to resume from (None: start fresh)."""
    from workbench.checkpoint_files import guard_run_folder

    return guard_run_folder(stages.run_dir(cfg, stage), stage, resume, check_running=is_main, take_lock=worker)


def start_checkpoint(cfg, stage: str, init_from: str, default_source: Path, source_verb: str,
                     resume: bool, worker: bool = False) -> tuple[Path, Path | None]:
    """A post-training stage's guard and starting point, as BadInput when either is wrong.
    Returns (the checkpoint to start from, the stage's newest checkpoint when resuming)."""
    from workbench import runs
    from workbench.checkpoint_files import resolve_checkpoint

    newest = guard(cfg, stage, resume, worker=worker)
    if newest is not None:  # only with resume: the guard refuses existing checkpoints otherwise
        return newest, newest
    if init_from:
        return resolve_checkpoint(cfg.resolve_path(init_from)), None
    if not runs.list_checkpoints(default_source):
        raise BadInput(f"{default_source}: no checkpoint to start {stage} from; run `picochat {source_verb} CONFIG` "
                       f"first, or set [{stage}] init_from")
    return runs.list_checkpoints(default_source)[-1], None


def single_process(stage: str) -> None:
    """Post-training runs in one process (no torchrun): say so rather than train N copies."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BadInput(f"{stage} runs in a single process; start it with `picochat {stage} CONFIG`, not torchrun")


def stage_config(cfg, checkpoint):
    """The run's config with the checkpoint's [model]: the architecture comes from the weights."""
    return dataclasses.replace(cfg, model=checkpoint.config.model)


def restore(state, checkpoint) -> dict[str, Any]:
    """Continue a loop.TrainState where `checkpoint` (loaded with its optimizer) stopped: the
    optimizer tensors, step, tokens and best val bpb, and the RNG states (a resumed run draws the
    random numbers the uninterrupted one drew). Returns its meta for the stage's own entries."""
    from workbench.train.common import restore_rng_states

    state.optimizers.load_state_tensors(checkpoint.optimizer_tensors)
    meta = checkpoint.meta
    state.step, state.tokens = int(meta["step"]), int(meta.get("tokens", 0))
    state.best_val_bpb = meta.get("best_val_bpb")
    restore_rng_states(meta.get("rng_states"))
    return meta


class QuietWriter:
    """What ranks other than 0 get instead of a RunWriter: only rank 0 writes the run folder."""

    def __getattr__(self, name):
        if name == "poll_control":
            return lambda: []
        return lambda *args, **kwargs: None


class StageRun:
    """A training stage's hold on its run folder, from the guard to the final status; use it as a
    context manager around the whole stage (see the module docstring). dist: under torchrun only
    rank 0 writes the folder."""

    def __init__(self, cfg, stage: str, dist=None):
        self.stage, self.run_dir = stage, stages.run_dir(cfg, stage)
        self.is_main = dist is None or dist.is_main
        self.writer: RunWriter | QuietWriter = QuietWriter()
        self._writers = contextlib.ExitStack()

    def __enter__(self) -> StageRun:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._writers.__exit__(*exc)  # a failing stage's writer finishes "failed"
        finally:
            unlock_run_folder(self.run_dir)  # also when it failed before its RunWriter existed

    def open_writer(self, total_steps: int | None, cfg) -> RunWriter | QuietWriter:
        """The stage's RunWriter (rank 0; a QuietWriter elsewhere), and the run's config.toml."""
        if self.is_main:
            self.writer = self._writers.enter_context(RunWriter(self.run_dir, self.stage, total_steps=total_steps))
            freeze_config(self.run_dir, cfg.frozen().to_toml())
        return self.writer

    def finish(self, result, done_message: str) -> None:
        """The final status of a stage whose loop returned: stopped (resumable), or done."""
        if result.stopped:
            self.writer.finish("stopped", f"stopped at step {result.step}; continue with --resume")
        else:
            self.writer.finish("done", done_message)
