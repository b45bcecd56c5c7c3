"""`picochat tokenizer CONFIG`: train the BPE tokenizer on the prepared train shards
(workbench/tokenizer.py's train_from_config) and write cfg.tokenizer_path."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config (TOML); reads [data] and [tokenizer]")


def run(args: argparse.Namespace) -> int:
    from workbench import config as config_module
    from workbench.runs import RunWriter
    from workbench.tokenizer import train_from_config

    cfg = config_module.load(args.config)
    result = train_from_config(cfg, RunWriter(cfg.out_dir, "tokenizer"), verbose=True)
    if result.get("warning"):
        print(f"warning: {result['warning']}", file=sys.stderr)
    print(f"tokenizer: vocab {result['vocab_size']}, {result['chars_per_token']:.2f} chars/token, "
          f"{result['bytes_per_token']:.2f} bytes/token (val), trained in {result['train_seconds']:.1f}s "
          f"-> {cfg.tokenizer_path}")
    return 0
