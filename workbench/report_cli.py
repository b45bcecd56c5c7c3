"""`picochat report RUN`: write runs/NAME/report.md and report.json from a run's folders
(workbench/evals/report.py) and show its summary."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the run folder (runs/NAME); its -sft/-grpo siblings are included")
    parser.add_argument("--quiet", action="store_true", help="print only the report's path")


def run(args: argparse.Namespace) -> int:
    from workbench.evals.report import write_report

    path = write_report(args.run)
    if not args.quiet:
        from rich.console import Console
        from rich.markdown import Markdown

        text = path.read_text(encoding="utf-8")
        Console().print(Markdown(text.split("\n## Config", 1)[0]))
    print(f"report: {path} (and {path.with_suffix('.json').name})")
    return 0
