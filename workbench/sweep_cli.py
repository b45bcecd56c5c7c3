"""`picochat sweep CONFIG --set SECTION.KEY=V1,V2,... [--points FILE] [--budget 5m] [--parallel N]
[--name SWEEP] [--dry-run] [--detach]`: a grid of pretraining runs and a table of their val bpb.

The work is in workbench/sweep.py (layout, naming, shared data, skipping and resuming); this
module reads the command line, prints, and detaches the driver on request. No torch here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from workbench import runs, sweep
from workbench.errors import BadInput


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="base run config (TOML)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.KEY=V1,V2,...",
                        help="values of one key (repeat for a grid); one value applies to every point")
    parser.add_argument("--points", metavar="FILE",
                        help="a listed set of points: TOML [[point]] tables of SECTION.KEY = value lines")
    parser.add_argument("--budget", metavar="DURATION",
                        help="[train] time_budget of every point, e.g. 90s, 5m, 1h")
    parser.add_argument("--parallel", type=int, default=1, metavar="N", help="points trained at once (default 1)")
    parser.add_argument("--name", help="the sweep's folder name under the runs folder (default: NAME-sweep)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the points and where their runs, data and tokenizers go; start nothing")
    parser.add_argument("--detach", action="store_true",
                        help="run the sweep in the background (log in runs/SWEEP/sweep.log) and return at once")


def run(args: argparse.Namespace) -> int:
    plan = plan_from_args(args)
    console = Console()
    if args.parallel < 1:
        raise BadInput(f"--parallel {args.parallel}: must be at least 1")
    if args.dry_run:
        print_plan(plan, console)
        return 0
    if args.detach:
        return detach(args, plan)
    sweep.check_no_other_driver(plan)  # before saying anything about starting
    console.print(f"sweep {plan.name}: {len(plan.points)} points, {args.parallel} at a time; "
                  f"results in {plan.dir / sweep.TABLE_FILE}", highlight=False)
    results = sweep.run_sweep(plan, args.parallel, say=lambda line: console.print(line, highlight=False))
    print_table(results, console)
    console.print(f"results: {plan.dir / sweep.TABLE_FILE} and {plan.dir / sweep.SWEEP_FILE}", highlight=False)
    unfinished = [result.name for result in results if result.state != "done"]
    if unfinished:
        console.print(f"not finished: {', '.join(unfinished)}; run the same command again to retry or resume them",
                      highlight=False)
        return 1
    return 0


def plan_from_args(args: argparse.Namespace) -> sweep.Sweep:
    axes: dict[str, list] = {}
    fixed: dict[str, object] = {}
    for text in args.settings:
        key, values = sweep.parse_set(text)
        if key in axes or key in fixed:
            raise BadInput(f"--set {key}: given twice")
        if len(values) > 1:
            axes[key] = values
        else:
            fixed[key] = values[0]
    if args.budget is not None:
        if "train.time_budget" in axes or "train.time_budget" in fixed:
            raise BadInput("--budget: train.time_budget is also given with --set")
        fixed["train.time_budget"] = sweep.check_setting("train.time_budget", args.budget, "--budget",
                                                         cross_checks=True)
    listed = sweep.load_points(args.points) if args.points else []
    return sweep.plan(args.config, axes, fixed, listed, args.name)


def print_plan(plan: sweep.Sweep, console: Console) -> None:
    """One line per point: its run folder, data folder and tokenizer (below the runs folder when
    they are there), so it shows which points share prepared data and a tokenizer."""
    where = plan.dir.parent
    console.print(f"sweep {plan.name}: {len(plan.points)} points; runs, data and tokenizers in {where}",
                  highlight=False)
    table = Table("run", "data", "tokenizer", box=None)
    for point in plan.points:
        table.add_row(*(_below(path, where) for path in (point.run_dir, point.config.data_dir,
                                                          point.config.tokenizer_path)))
    console.print(table)


def _below(path: Path, folder: Path) -> str:
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


def print_table(results: list[sweep.PointResult], console: Console) -> None:
    header, rows = sweep.table(results)
    table = Table(box=None)
    for title in header:
        table.add_column(title, overflow="fold")  # a narrow terminal wraps names, never cuts them
    for row in rows:
        table.add_row(*row)
    console.print(table)


def detach(args: argparse.Namespace, plan: sweep.Sweep) -> int:
    """Start this same sweep as a background driver whose output goes to runs/SWEEP/sweep.log."""
    sweep.check_no_other_driver(plan)
    argv = [str(Path(args.config).resolve()), "--parallel", str(args.parallel), "--name", plan.name]
    for text in args.settings:
        argv += ["--set", text]
    if args.points:
        argv += ["--points", str(Path(args.points).resolve())]
    if args.budget is not None:
        argv += ["--budget", args.budget]
    log = plan.dir / sweep.LOG_FILE
    pid = runs.spawn_detached(runs.picochat_command("sweep", *argv), log)
    print(f"started sweep {plan.name} in the background (pid {pid}); log: {log}")
    print(f"results as points finish: {plan.dir / sweep.TABLE_FILE}; watch it with: picochat-tui {plan.dir.parent}")
    return 0
