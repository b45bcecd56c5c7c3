"""`picochat export CHECKPOINT --format hf|safetensors --out DIR [--force]`: see workbench/export.py."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder, or a run folder (its newest checkpoint)")
    # Not argparse choices: an unknown format is bad input like any other (one line, exit 2).
    parser.add_argument("--format", default="hf", dest="fmt",
                        help="hf: a folder transformers loads (trust_remote_code), with tokenizer, chat "
                             "template and model card; safetensors: weights, config.json and tokenizer.json only")
    parser.add_argument("--out", required=True, help="output folder (must be empty or absent, unless --force)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    from workbench.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, args.fmt, force=args.force)
    files = sorted(path.name for path in out.iterdir())
    print(f"wrote {out} ({args.fmt}): {', '.join(files)}")
    if args.fmt == "hf":
        print(f'load it: AutoModelForCausalLM.from_pretrained("{out}", trust_remote_code=True) and '
              f'AutoTokenizer.from_pretrained("{out}")   (pip install "picochat[hf]")')
    return 0
