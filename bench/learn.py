"""The race that matters: how good a model a wall-clock budget buys, on text it never saw.

    python bench/learn.py                         # budgets 2, 5 and 10 minutes
    python bench/learn.py --budgets 2 --a configs/shakespeare.toml --b "configs/shakespeare.toml:model.depth=3"

Two contenders train at the same time, each pinned to its own core with one thread
(os.sched_setaffinity + torch.set_num_threads(1), two processes), for the same budget, on the
first 90% of Tiny Shakespeare's input.txt; both are scored on the whole contiguous last 10% by
`held_out_bpb` (below, the one scoring function for every model): bits per byte over every
byte, the text cut into consecutive windows of the model's own context. By default contender A is
picochat's configs/shakespeare.toml and B a char-level nanoGPT-style baseline (bench/baseline_gpt.py,
nanoGPT's README CPU recipe: 4 layers, width 128, context 64, batch 12, AdamW lr 1e-3 with beta2 0.99,
weight decay 0.1, dropout 0, 100 warmup iterations, cosine decay to lr/10).

A contender spec is `baseline[:key=value,...]` (keys: depth width heads seq_len batch lr
weight_decay dropout) or `CONFIG.toml[:section.key=value,...]` (a picochat recipe, values in TOML
syntax). Picochat runs its real pipeline: prepare (the 90% as training data, the 10% as
val_sources for its own logging only), its tokenizer trained on the training data only, pretrain
with [train] time_budget = the budget. The baseline fits its schedule to the budget the same
way: it times its first iterations, then fixes max_iters. Set-up (tokenizer, data) and the final
scoring are outside the budget for both.

One line per budget: both bpb figures, the difference (A - B: negative means A is better),
tokens seen, parameters. On a shared machine wall-clock figures move with the neighbours' load
(a pinned core shared with other jobs gives a contender a fraction of its time): there
`--clock cpu` counts each contender's budget in its own process CPU time, which is what an idle
core would give it. Publish wall-clock figures from a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

DEFAULT_TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
TRAIN_FRACTION = 0.9  # as nanoGPT's and char-rnn's prepare scripts: the first 90% trains
BASELINE = {"depth": 4, "width": 128, "heads": 4, "seq_len": 64, "batch": 12, "lr": 1e-3, "weight_decay": 0.1,
            "dropout": 0.0, "warmup": 100, "measure_iters": 30}


def split_text(path: Path) -> tuple[str, str]:
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * TRAIN_FRACTION)
    return text[:cut], text[cut:]


def held_out_bpb(logits_fn, ids: list[int], token_bytes: list[int], context: int, vocab_size: int,
                 batch_size: int = 16) -> float:
    """Bits per byte of a model over a token sequence covering the held-out text: consecutive
    windows of `context` inputs each predict their next tokens, so every token but the first is
    scored once; the first (no prediction possible) is charged log2(vocab) bits if it has bytes.
    Tokens with 0 bytes (a leading <|bos|>) count in neither sum. logits_fn: [B, T] -> [B, T, V]."""
    import torch

    tokens = torch.tensor(ids, dtype=torch.long)
    sizes = torch.tensor(token_bytes, dtype=torch.long)[tokens]
    bits = math.log2(vocab_size) if sizes[0] > 0 else 0.0
    starts = list(range(0, len(ids) - 1, context))
    full = [s for s in starts if s + context + 1 <= len(ids)]
    windows = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    windows += [[s] for s in starts[len(full):]]  # the last, shorter window
    with torch.no_grad():
        for group in windows:
            length = min(context, len(ids) - 1 - group[0])
            inputs = torch.stack([tokens[s:s + length] for s in group])
            targets = torch.stack([tokens[s + 1:s + 1 + length] for s in group])
            logprobs = torch.log_softmax(logits_fn(inputs).float(), dim=-1)
            nats = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            counted = sizes[torch.stack([torch.arange(s + 1, s + 1 + length) for s in group])] > 0
            bits += float((nats * counted).sum()) / math.log(2)
    return bits / int(sizes.sum())


# ---------------------------------------------------------------------------------------------
# the contenders (each runs in its own pinned single-thread process)


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    name, _, settings = spec.partition(":")
    overrides = {}
    for item in filter(None, settings.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise SystemExit(f"contender {spec!r}: settings are key=value, got {item!r}")
        overrides[key.strip()] = value.strip()
    return name, overrides


def train_baseline(overrides: dict[str, str], budget: float, train_text: str, val_text: str, clock) -> dict:
    import torch
    from baseline_gpt import BaselineGPT

    settings = dict(BASELINE)
    for key, value in overrides.items():
        if key not in settings:
            raise SystemExit(f"baseline: unknown setting {key!r} (use {', '.join(settings)})")
        settings[key] = type(settings[key])(float(value)) if not isinstance(settings[key], str) else value
    chars = sorted(set(train_text + val_text))  # nanoGPT's char vocabulary: every character of input.txt
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in train_text], dtype=torch.long)
    torch.manual_seed(1337)
    model = BaselineGPT(len(chars), settings["depth"], settings["width"], settings["heads"], settings["seq_len"],
                        dropout=settings["dropout"])
    optimizer = model.make_optimizer(lr=settings["lr"], weight_decay=settings["weight_decay"], betas=(0.9, 0.99))
    block, rows, lr = settings["seq_len"], settings["batch"], settings["lr"]
    started = clock()
    max_iters, timed_from, it = None, None, 0
    while max_iters is None or it < max_iters:
        if it < settings["warmup"]:
            rate = lr * (it + 1) / settings["warmup"]
        elif max_iters is None:
            rate = lr
        else:  # nanoGPT's cosine decay to lr / 10 at max_iters
            progress = min(1.0, (it - settings["warmup"]) / max(1, max_iters - settings["warmup"]))
            rate = lr / 10 + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - lr / 10)
        for group in optimizer.param_groups:
            group["lr"] = rate
        starts = torch.randint(len(data) - block - 1, (rows,))
        x = torch.stack([data[s:s + block] for s in starts])
        y = torch.stack([data[s + 1:s + 1 + block] for s in starts])
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
        now = clock()
        if it == 1:
            timed_from = (it, now)
        elif max_iters is None and (it - timed_from[0] >= settings["measure_iters"] or now - started >= budget):
            per_iter = (now - timed_from[1]) / (it - timed_from[0])
            max_iters = it + max(0, int((budget - (now - started)) / per_iter))
    train_seconds = clock() - started
    model.eval()
    val_ids = [index[c] for c in val_text]
    bpb = held_out_bpb(model, val_ids, [1] * len(chars), block, len(chars))
    return {"bpb": bpb, "tokens": it * rows * block, "params": model.num_params(), "steps": it,
            "train_seconds": train_seconds, "final_loss": float(loss.detach())}


def train_picochat(config_path: str, overrides: dict[str, str], budget: float, train_text: str, val_text: str,
                   folder: Path, clock) -> dict:
    from workbench import config as config_module
    from workbench.checkpoint import load_checkpoint
    from workbench.data.prepare import prepare
    from workbench.tokenizer import train_from_config
    from workbench.train import loop
    from workbench.train.pretrain import pretrain

    loop.TimeBudget.clock = staticmethod(clock)

    sections = tomllib.loads((REPO / config_path).read_text(encoding="utf-8"))
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = tomllib.loads(f"v = {value}")["v"]
    (folder / "train.txt").write_text(train_text, encoding="utf-8")
    (folder / "val.txt").write_text(val_text, encoding="utf-8")
    sections["run"] = {**sections.get("run", {}), "out_dir": str(folder / "run")}
    sections["data"] = {**sections.get("data", {}), "sources": [str(folder / "train.txt")],
                        "val_sources": [str(folder / "val.txt")], "dir": str(folder / "data")}
    train = sections.setdefault("train", {})
    train.update(time_budget=f"{budget}s", eval_every=10**9, save_every=10**9, sample_every=0,
                 eval_tokens=min(int(train.get("eval_tokens", 8192)), 8192))
    path = folder / "recipe.toml"
    path.write_text(_toml(sections), encoding="utf-8")
    cfg = config_module.load(path)
    prepare(cfg)
    train_from_config(cfg)
    started = clock()
    result = pretrain(cfg, verbose=False)
    train_seconds = clock() - started
    checkpoint = load_checkpoint(result.last_checkpoint)
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    model.eval()
    ids = tokenizer.encode(val_text, bos=True)
    bpb = held_out_bpb(model, ids, tokenizer.token_bytes(), cfg.model.seq_len, tokenizer.vocab_size)
    return {"bpb": bpb, "tokens": result.tokens, "params": model.num_params(), "steps": result.step,
            "train_seconds": train_seconds, "final_loss": result.last_loss}


def _toml(sections: dict) -> str:
    import tomli_w

    return tomli_w.dumps(sections)


def worker(args: argparse.Namespace) -> int:
    os.sched_setaffinity(0, {args.core})
    import torch

    torch.set_num_threads(1)
    train_text, val_text = split_text(Path(args.text))
    name, overrides = parse_spec(args.worker)
    clock = time.process_time if args.clock == "cpu" else time.monotonic
    with tempfile.TemporaryDirectory(prefix="learn-") as folder:
        if name == "baseline":
            result = train_baseline(overrides, args.budget, train_text, val_text, clock)
        else:
            result = train_picochat(name, overrides, args.budget, train_text, val_text, Path(folder), clock)
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    return 0


# ---------------------------------------------------------------------------------------------
# the race


def race(specs: list[str], budget: float, text: str, cores: list[int], clock: str) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="learn-race-") as folder:
        outs = [Path(folder) / f"{i}.json" for i in range(len(specs))]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        processes = [subprocess.Popen([sys.executable, __file__, "--worker", spec, "--core", str(core),
                                       "--budget", str(budget), "--text", text, "--out", str(out),
                                       "--clock", clock], env=env)
                     for spec, core, out in zip(specs, cores, outs, strict=True)]
        codes = [process.wait() for process in processes]
        if any(codes):
            raise SystemExit(f"a contender failed (exit codes {codes})")
        return [json.loads(out.read_text()) for out in outs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="2,5,10", help="minutes, comma-separated")
    parser.add_argument("--a", default="configs/shakespeare.toml", help="contender A (core 0)")
    parser.add_argument("--b", default="baseline", help="contender B (core 1)")
    parser.add_argument("--cores", default="0,1", help="the two cores to pin A and B to")
    parser.add_argument("--text", default=str(DEFAULT_TEXT), help="the running text (first 90%% trains)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="count budgets in wall time, or in each contender's CPU time (shared machines)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not Path(args.text).exists():
        raise SystemExit(f"{args.text}: not found (Tiny Shakespeare's input.txt)")
    cores = [int(c) for c in args.cores.split(",")]
    lines = []
    for minutes in [float(m) for m in args.budgets.split(",")]:
        a, b = race([args.a, args.b], minutes * 60, args.text, cores, args.clock)
        line = (f"learn {minutes:g} min: A {a['bpb']:.4f} bpb | B {b['bpb']:.4f} bpb | A - B {a['bpb'] - b['bpb']:+.4f}"
                f" | tokens A {a['tokens']:,} B {b['tokens']:,} | params A {a['params']:,} B {b['params']:,}"
                f" | steps A {a['steps']} B {b['steps']} | {args.clock} s A {a['train_seconds']:.0f} B "
                f"{b['train_seconds']:.0f}")
        print(line, flush=True)
        lines.append({"minutes": minutes, "a": {"spec": args.a, **a}, "b": {"spec": args.b, **b}})
    if args.json:
        Path(args.json).write_text(json.dumps(lines, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
