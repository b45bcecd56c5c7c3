"""`picochat runs | status RUN | stop RUN | pause RUN | resume-run RUN | attach RUN`.

RUN is a run folder path or a name under the runs folder (./runs by default, or $PICOCHAT_RUNS).
No torch here.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from workbench import runs, sweep
from workbench.errors import BadInput


def runs_root() -> Path:
    return Path(os.environ.get("PICOCHAT_RUNS", "runs"))


def resolve_run(name: str) -> Path:
    path = Path(name)
    if (path / "status.json").exists() or (path / "metrics.jsonl").exists():
        return path
    candidate = runs_root() / name
    if candidate.is_dir():
        return candidate
    raise BadInput(f"{name}: no such run (looked in {path} and {candidate})")


def add_arguments_for(verb: str, parser: argparse.ArgumentParser) -> None:
    if verb == "runs":
        parser.add_argument("runs_dir", nargs="?", default=None, help="runs folder (default ./runs)")
    else:
        parser.add_argument("run", help="run folder or name under ./runs")
    if verb == "stop":
        parser.add_argument("--wait", type=float, default=0.0,
                            help="seconds to wait for a clean stop before sending SIGTERM")


def _fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def run(args: argparse.Namespace) -> int:
    console = Console()
    if args.verb == "runs":
        root = args.runs_dir or runs_root()
        infos, sweeps = runs.list_runs(root), sweep.list_sweeps(root)
        if not infos and not sweeps:
            console.print(f"no runs in {root}", markup=False)
            return 0
        table = Table("run", "state", "stage", "step", "loss", "tok/s", "eta", box=None)
        # Text cells: a run folder's words are shown as they are, never as markup. A sweep's points
        # are indented under it, best first, step saying how many of them are done.
        for depth, info in sweep.grouped(infos, sweeps):
            if isinstance(info, sweep.SweepInfo):
                table.add_row(Text(info.name, style="bold"), Text(info.state), "sweep",
                              f"{info.done}/{len(info.points)}", "-", "-", "-")
                continue
            step = f"{info.step}/{info.total_steps}" if info.total_steps else str(info.step)
            table.add_row(Text("  " * depth + info.name), info.state, Text(info.stage), step, _fmt(info.loss, ".4f"),
                          _fmt(info.tokens_per_second, ",.0f"), runs.format_duration(info.eta_seconds))
        console.print(table)
        return 0
    run_dir = resolve_run(args.run)
    if args.verb == "status":
        info = runs.run_info(run_dir)
        console.print(f"[bold]{escape(info.name)}[/] {escape(str(info.path))}")
        console.print(f"state {info.state}  stage {info.stage}  step {info.step}/{info.total_steps or '?'}  "
                      f"tokens {info.tokens:,}  loss {_fmt(info.loss, '.4f')}  "
                      f"tok/s {_fmt(info.tokens_per_second, ',.0f')}  eta {runs.format_duration(info.eta_seconds)}",
                      markup=False)
        if info.message:
            console.print(f"message: {info.message}", markup=False)
        for checkpoint in runs.list_checkpoints(run_dir):
            console.print(f"checkpoint {checkpoint}", markup=False)
        return 0
    if args.verb in ("stop", "pause", "resume-run"):
        command = {"stop": "stop", "pause": "pause", "resume-run": "resume"}[args.verb]
        state = runs.effective_state(runs.read_status(run_dir))
        if state not in ("running", "starting", "paused", "stalled"):
            raise BadInput(f"{run_dir}: run is {state}, nothing to {command}")
        if command == "stop":
            runs.stop_run(run_dir, grace_seconds=getattr(args, "wait", 0.0))
        else:
            runs.send_control(run_dir, command)
        console.print(f"{command} sent to {run_dir}", markup=False)
        return 0
    if args.verb == "attach":
        return attach(run_dir, console)
    return 0


def attach(run_dir: Path, console: Console) -> int:
    """Follow a run: print each new metrics record as a line until it finishes (ctrl+c detaches)."""
    tail = runs.MetricsTail(run_dir / "metrics.jsonl")
    tail.read()  # skip history: show what happens from now on
    console.print(f"attached to {run_dir} (ctrl+c detaches; the run goes on)", markup=False)
    try:
        while True:
            for record in tail.read():
                console.print(format_record(record), highlight=False)
            state = runs.effective_state(runs.read_status(run_dir))
            if state in ("done", "stopped", "failed", "crashed", "missing"):
                console.print(f"run is {state}")
                return 0
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("detached")
        return 0


def format_record(record: dict) -> Text:
    """One metrics record as an `attach` line: its kind, then key=value for the rest."""
    fields = {k: v for k, v in record.items() if k not in ("t", "kind", "stage")}
    text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    line = Text(f"{record.get('kind', '?'):8}", style="dim")
    line.append(f" {text}")
    return line
