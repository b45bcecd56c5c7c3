"""`picochat config show|check CONFIG`."""

from __future__ import annotations

import argparse

from workbench import config as config_module


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show", "check"], help="show: print the resolved config; check: validate")
    parser.add_argument("config", nargs="?", default=None, help="TOML file (default: configs/tiny.toml)")


def run(args: argparse.Namespace) -> int:
    path = args.config or config_module.default_config_path()
    config = config_module.load(path)  # BadInput -> exit 2 with file:line
    if args.action == "check":
        model = config.model.resolved()
        print(f"{path}: ok ({model.kind}, depth {model.depth}, width {model.width}, "
              f"{config.train.steps} steps, out_dir {config.out_dir})")
    else:
        print(f"# {path}, fully resolved (derived sizes filled in)")
        resolved = config.frozen()
        resolved.model = config.model.resolved()
        print(resolved.to_toml(), end="")
    return 0
