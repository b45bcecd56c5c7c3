"""Generation speed: prefill and decode tokens/s, and how close batch-1 decode gets to the
memory-bandwidth bound of this machine (measured in the same run).

For depth 4 and 8 (the model shapes of configs/d4.toml and d8.toml), batch 1 and batch 8:
no cache (fp32, the baseline every cache line is compared with), then fp32, bf16 and INT8 with
the cache, each eager and compiled (the engine's --compile: torch.compile of the static-shape
decode step; its compile time is printed once per line, not counted in the tokens/s). The bound
for a dtype is bandwidth / bytes of weights read per token (every linear layer's weights, the
head included; the embedding is a row lookup). One line each:

    generate d8 b1 fp32 compiled: prefill 1,887 tok/s | decode 261.2 tok/s | bound 286 tok/s at 31.2 GB/s (0.91x) | 109.1 MB/token | compile 4 s

    python bench/generate.py [--depths 4 8] [--prompt 64] [--tokens 64] [--threads N] [--repeats 3]
                             [--clock wall|cpu] [--no-compile]

--clock cpu times with this process's CPU time (time.process_time) instead of the wall clock,
bandwidth included, and runs on one thread: on a machine shared with other jobs, wall-clock
figures measure the other jobs as much as this code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from membw import read_bandwidth  # noqa: E402

from workbench import config as config_module  # noqa: E402
from workbench.engine.engine import measure_speed, optimize_for_cpu_decode  # noqa: E402
from workbench.int8 import Int8Linear, quantize_model  # noqa: E402
from workbench.model import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def weight_bytes_per_token(model) -> int:
    """Bytes a batch-1 decode step reads from weights: every (int8 or float) linear layer."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, Int8Linear):
            total += module.weight.numel() + module.weight_scale.numel() * module.weight_scale.element_size()
    return total


def variant(base, kind: str, compiled: bool):
    """The same weights as fp32, bf16, or INT8 (fp32 activations), laid out as the engine does."""
    import copy

    model = copy.deepcopy(base)
    if kind == "bf16":
        model = model.to(torch.bfloat16)
    elif kind == "int8":
        model = quantize_model(model)
    if not compiled:
        optimize_for_cpu_decode(model)  # as Engine.from_checkpoint does on CPU without --compile
    torch._dynamo.reset()  # each variant compiles afresh, not as a recompile of the previous one
    return model.eval()


def best_speed(model, repeats: int, **kwargs) -> dict[str, float]:
    """The best of `repeats` runs (the least disturbed by anything else on the machine)."""
    runs = [measure_speed(model, **kwargs) for _ in range(repeats)]
    return {"prefill": max(r["prefill_tokens_per_second"] for r in runs),
            "decode": max(r["decode_tokens_per_second"] for r in runs)}


def compile_seconds(model, batch: int, common: dict) -> float:
    """Time of a first, short compiled generation: the compile of this batch size's graph."""
    start = common["clock"]()
    measure_speed(model, batch_size=batch, compiled=True, **dict(common, new_tokens=2))
    return common["clock"]() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens (prefill)")
    parser.add_argument("--tokens", type=int, default=64, help="decoded tokens")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per line")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time, one thread (for a busy machine)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="eager lines only (compiling takes ~15-25 s per line)")
    args = parser.parse_args(argv)
    clock = time.perf_counter
    if args.clock == "cpu":
        clock, args.threads = time.process_time, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"generate: {torch.get_num_threads()} threads, {args.clock} clock, {os.cpu_count()} cpus, "
          f"load average {load:.1f}, torch {torch.__version__}", flush=True)
    for depth in args.depths:
        cfg = config_module.load(REPO / "configs" / f"d{depth}.toml")
        base = build_model(cfg.model, cfg.tokenizer.vocab_size).eval()
        with torch.no_grad():  # init zeroes the output projections: give them real values
            for parameter in base.parameters():
                if parameter.ndim == 2 and not parameter.abs().sum():
                    parameter.normal_(std=0.02)
        tag = f"d{depth}"
        common = {"prompt_tokens": args.prompt, "new_tokens": args.tokens, "clock": clock}
        baseline = variant(base, "fp32", compiled=False)
        speeds = best_speed(baseline, args.repeats, batch_size=1, use_cache=False, **common)
        print(f"generate {tag} b1 fp32 no-cache: prefill {speeds['prefill']:,.0f} tok/s | "
              f"decode {speeds['decode']:,.1f} tok/s", flush=True)
        for kind in ("fp32", "bf16", "int8"):
            for compiled in (False, True)[:1 + args.compile]:
                model = variant(base, kind, compiled)
                megabytes = weight_bytes_per_token(model) / 1e6
                mode = "compiled" if compiled else "eager"
                single = None
                for batch in args.batches:
                    note = ""
                    if compiled:
                        note = f" | compile {compile_seconds(model, batch, common):.0f} s"
                    # this VM's bandwidth moves with its neighbours (30-48 GB/s within minutes):
                    # each bound is measured right before the line it bounds
                    bandwidth = read_bandwidth(clock=clock) if batch == 1 else 0.0
                    speeds = best_speed(model, args.repeats, batch_size=batch, compiled=compiled, **common)
                    line = (f"generate {tag} b{batch} {kind} {mode}: prefill {speeds['prefill']:,.0f} tok/s | "
                            f"decode {speeds['decode']:,.1f} tok/s")
                    if batch == 1:
                        single = speeds["decode"]
                        bound = bandwidth / (megabytes * 1e6)
                        line += (f" | bound {bound:,.0f} tok/s at {bandwidth / 1e9:.1f} GB/s "
                                 f"({speeds['decode'] / bound:.2f}x) | {megabytes:.1f} MB/token")
                    elif single:
                        line += f" ({speeds['decode'] / single:.1f}x batch 1)"
                    print(line + note, flush=True)
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - start:.0f} s)")
    sys.exit(code)
