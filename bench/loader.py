"""Data loading: tokens/s of the pretraining loader alone, against the rate training asks of it.

The loader (workbench/train/loader.py) reads parquet shards, tokenizes in a background thread and
packs rows; here it runs with nothing consuming but this loop, from a `picochat prepare` of Tiny
Shakespeare into a temporary folder and a tokenizer trained on it (vocab 8192). It is set against:
- training on this machine: d4 and d8 picochat micro-steps timed here (forward + backward), and
- an H200 at 50% MFU (the issue's GPU target): 0.5 x 989 TFLOP/s / flops_per_token() of d12 and
  d20, computed from the model shape (built on the meta device, so nothing is allocated); these
  are the rates the loader would have to feed, not measured GPU figures.

    python bench/loader.py [--rows 2000] [--batch 16] [--seq-len 1024] [--world-size 8]

--world-size W times rank 0 of W: each rank reads and tokenizes only its own row groups (one data
stream per rank), so the W ranks together supply W times rank 0's rows/s (the figure reported;
the ranks share nothing but the file system).

    loader tinyshakespeare: 1.61 M tokens/s (16 x 1024 rows, one tokenizing thread) | training here:
    d4 4,152 tok/s (387x), d8 956 tok/s (1,682x) | H200 at 50% MFU needs: d12 0.65 M tok/s (2.5x), ...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from matmul_peak import GPU_PEAK_BF16_TFLOPS  # noqa: E402

from workbench import config as config_module  # noqa: E402
from workbench.config import ModelSection  # noqa: E402
from workbench.data.prepare import prepare  # noqa: E402
from workbench.model import build_model  # noqa: E402
from workbench.tokenizer import train_tokenizer  # noqa: E402
from workbench.train.loader import PackingLoader  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def prepared_data(source: Path, folder: Path) -> config_module.Config:
    """`picochat prepare` of `source` into `folder` (a temporary run), the config that says where."""
    config_file = folder / "bench.toml"
    config_file.write_text(f'[run]\nname = "bench"\nout_dir = "{folder / "run"}"\n\n'
                           f'[data]\nsources = ["{source}"]\nval_fraction = 0.01\n')
    cfg = config_module.load(config_file)
    prepare(cfg)
    return cfg


def loader_tokens_per_second(cfg, tokenizer, rows: int, batch: int, seq_len: int, world_size: int = 1) -> float:
    """Rows of seq_len tokens pulled from a fresh loader (epochs wrap), tokenization included: rank 0
    of world_size, times world_size (every rank reads its own row groups, at the same rate)."""
    loader = PackingLoader(cfg.data_dir, "train", tokenizer, seq_len, batch, loop=True, rank=0,
                           world_size=world_size)
    batches = iter(loader)
    start = time.perf_counter()
    produced = 0
    while produced < rows * seq_len:
        inputs, _ = next(batches)
        produced += inputs.numel()
    seconds = time.perf_counter() - start
    loader.close()
    return world_size * produced / seconds


def training_tokens_per_second(depth: int, vocab: int, rows: int = 8, seq_len: int = 256, steps: int = 2) -> float:
    """Best forward + backward micro-step of a picochat GPT of this depth here (fp32)."""
    model = build_model(ModelSection(depth=depth, seq_len=seq_len), vocab)
    batch = torch.randint(0, vocab, (rows, seq_len + 1))
    best = float("inf")
    for _ in range(steps + 1):
        start = time.perf_counter()
        model(batch[:, :-1], batch[:, 1:]).backward()
        best = min(best, time.perf_counter() - start)
    return rows * seq_len / best


def gpu_needed_tokens_per_second(depth: int, vocab: int, seq_len: int) -> float:
    """Tokens/s a depth-`depth` model trains at on an H200 at 50% MFU (bf16 dense peak)."""
    with torch.device("meta"):
        model = build_model(ModelSection(depth=depth, seq_len=seq_len), vocab)
    return 0.5 * GPU_PEAK_BF16_TFLOPS * 1e12 / model.flops_per_token()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.exists()
                        else REPO / "assets" / "tiny_corpus.txt")
    parser.add_argument("--rows", type=int, default=2000, help="rows to pull from the loader")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--world-size", type=int, default=1, help="ranks: rank 0's rate x this")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        cfg = prepared_data(args.data.resolve(), Path(folder))
        text = args.data.read_text(encoding="utf-8")
        tokenizer = train_tokenizer(iter(text.split("\n\n")), args.vocab_size)
        loader_rate = loader_tokens_per_second(cfg, tokenizer, args.rows, args.batch, args.seq_len, args.world_size)
    here = {depth: training_tokens_per_second(depth, args.vocab_size) for depth in (4, 8)}
    gpu = {depth: gpu_needed_tokens_per_second(depth, 32768, 2048) for depth in (12, 20)}
    name = args.data.parent.name if args.data.stem == "input" else args.data.stem
    print(f"loader {name}: {loader_rate / 1e6:.2f} M tokens/s = {loader_rate / args.seq_len:,.0f} rows/s "
          f"({args.batch} x {args.seq_len} rows, rank 0's rate x {args.world_size} ranks) | training here: "
          + ", ".join(f"d{d} {rate:,.0f} tok/s ({loader_rate / rate:,.0f}x)" for d, rate in here.items())
          + " | H200 at 50% MFU needs: "
          + ", ".join(f"d{d} {rate / 1e6:.2f} M tok/s ({loader_rate / rate:.1f}x)" for d, rate in gpu.items()))


if __name__ == "__main__":
    main()
