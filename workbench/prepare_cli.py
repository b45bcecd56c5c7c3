"""`picochat prepare CONFIG`: the config's [data] sources -> parquet shards (workbench/data/prepare.py),
with a progress bar on a terminal and the summary at the end."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config (TOML); reads [data]")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from workbench import config as config_module
    from workbench.data.prepare import format_summary, prepare
    from workbench.runs import RunWriter

    cfg = config_module.load(args.config)
    writer = RunWriter(cfg.out_dir, "prepare")
    console = Console(stderr=True)
    if console.is_terminal:
        bar = Progress(TextColumn("prepare"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TextColumn("{task.fields[documents]:,} docs"), TimeRemainingColumn(),
                       console=console, transient=True)
        with bar:
            task = bar.add_task("prepare", total=None, documents=0)

            def update(done: int, total: int, documents: int) -> None:
                bar.update(task, completed=done, total=total, documents=documents)

            manifest = prepare(cfg, writer, progress=update)
    else:
        manifest = prepare(cfg, writer)
    print(format_summary(manifest, cfg.data_dir))
    return 0
