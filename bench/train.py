"""Training speed: picochat against a plain nanoGPT of the same shape, tokens/s and MFU.

    python bench/train.py                          # d4 and d8, fp32 and bf16 autocast, on the CPU
    python bench/train.py --configs d4 --modes fp32 --steps 5 --threads 2 --compile
    python bench/train.py --threads 1 --clock cpu  # on a shared machine: CPU time, one thread

One line per config and mode, e.g.
    train d4 cpu fp32: picochat 12,345 tok/s (MFU 23.1%) | nanoGPT 11,000 tok/s | ratio 1.12

Shapes come from configs/NAME.toml: depth, width, heads, seq_len, vocab ([tokenizer] vocab_size) and
device_batch_size; the baseline (bench/baseline_gpt.py) gets the same depth, width, heads, seq_len,
vocab and rows. The two models are timed in turn, step after step, so a busy machine slows both
alike; each figure is the best of --steps timed steps after --warmup untimed ones. A step is one
micro-batch forward and backward; the optimizer step is timed apart and charged once per
[train] total_batch_tokens, as in real training with gradient accumulation. On the CPU, micro-batches
are capped at --max-rows-tokens tokens (default 2048, where the configs ask for 4096 and 8192: the
per-token cost hardly depends on it, and the whole run stays near one minute on 2 idle cores).
MFU = flops_per_token() x tokens/s over the matmul peak bench/matmul_peak.py measures on this
machine (CPU, same threads and clock) or 989 TFLOP/s bf16 (H100/H200). With --clock cpu, times are process CPU time: with --threads 1 that is the speed an
idle core gives, however busy the machine is (wall-clock figures on a shared machine mean little).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from baseline_gpt import BaselineGPT  # noqa: E402
from matmul_peak import GPU_PEAK_BF16_TFLOPS, matmul_peak_gflops  # noqa: E402

from workbench import config as config_module  # noqa: E402
from workbench.model import build_model  # noqa: E402
from workbench.optim import build_optimizer  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Contender:
    """One model under test: its micro-batch step and its optimizer step, timed separately."""

    def __init__(self, name, model, optimizer, flops_per_token, device, dtype, clock):
        self.name, self.model, self.optimizer = name, model, optimizer
        self.flops_per_token, self.device, self.dtype, self.clock = flops_per_token, device, dtype, clock
        self.micro_seconds: list[float] = []
        self.optimizer_seconds: list[float] = []

    def step(self, batch: torch.Tensor, record: bool) -> None:
        sync(self.device)
        start = self.clock()
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            loss = self.model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        sync(self.device)
        middle = self.clock()
        self.optimizer.step()
        self.optimizer.zero_grad()
        sync(self.device)
        if record:
            self.micro_seconds.append(middle - start)
            self.optimizer_seconds.append(self.clock() - middle)

    def tokens_per_second(self, micro_tokens: int, accumulation: float) -> float:
        seconds = accumulation * min(self.micro_seconds) + min(self.optimizer_seconds)
        return accumulation * micro_tokens / seconds


def bench_config(name: str, dtype: str, args, device: str, peak_flops: float, clock) -> dict:
    cfg = config_module.load(REPO / "configs" / f"{name}.toml")
    model_cfg = cfg.model.resolved()
    vocab, seq_len = args.vocab or cfg.tokenizer.vocab_size, model_cfg.seq_len
    rows = cfg.train.device_batch_size
    if device == "cpu":
        rows = max(1, min(rows, args.max_rows_tokens // seq_len))
    micro_tokens = rows * seq_len
    accumulation = cfg.train.total_batch_tokens / micro_tokens

    torch.manual_seed(0)
    pico = build_model(cfg.model, vocab).to(device)
    baseline = BaselineGPT(vocab, model_cfg.depth, model_cfg.width, model_cfg.heads, seq_len).to(device)
    contenders = [
        Contender("picochat", pico, build_optimizer(pico, cfg.train), pico.flops_per_token(), device, dtype, clock),
        Contender("nanoGPT", baseline, baseline.make_optimizer(), baseline.flops_per_token(), device, dtype, clock),
    ]
    if args.compile:
        for contender in contenders:
            contender.model = torch.compile(contender.model)
    batch = torch.randint(0, vocab, (rows, seq_len + 1), device=device)
    for step in range(args.warmup + args.steps):
        for contender in contenders:
            contender.step(batch, record=step >= args.warmup)

    label = f"{name} vocab {vocab}" if args.vocab else name
    result = {"config": label, "device": device, "dtype": dtype, "compile": args.compile, "clock": args.clock,
              "threads": torch.get_num_threads(), "rows": rows, "seq_len": seq_len, "vocab": vocab,
              "accumulation": accumulation, "peak_gflops": peak_flops / 1e9}
    for contender in contenders:
        speed = contender.tokens_per_second(micro_tokens, accumulation)
        result[contender.name] = {"tokens_per_second": speed, "mfu": 100 * speed * contender.flops_per_token / peak_flops,
                                  "flops_per_token": contender.flops_per_token,
                                  "micro_seconds": contender.micro_seconds,
                                  "optimizer_seconds": contender.optimizer_seconds}
    result["ratio"] = result["picochat"]["tokens_per_second"] / result["nanoGPT"]["tokens_per_second"]
    return result


def line(result: dict) -> str:
    pico, base = result["picochat"], result["nanoGPT"]
    mode = result["dtype"] + (" compiled" if result["compile"] else "")
    if result["clock"] == "cpu":
        mode += f" {result['threads']}-thread cpu-time"
    return (f"train {result['config']} {result['device']} {mode}: picochat {pico['tokens_per_second']:,.0f} tok/s "
            f"(MFU {pico['mfu']:.1f}%) | nanoGPT {base['tokens_per_second']:,.0f} tok/s | ratio {result['ratio']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="d4,d8", help="comma-separated names in configs/")
    parser.add_argument("--modes", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--vocab", type=int, default=0, help="override the configs' vocab size (e.g. 32768)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time instead of wall time (CPU only; use with --threads 1)")
    parser.add_argument("--max-rows-tokens", type=int, default=2048,
                        help="CPU only: cap a micro-batch at this many tokens")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every timing")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        args.clock = "wall"
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    results = []
    for dtype in args.modes.split(","):
        if device == "cuda":
            peak = GPU_PEAK_BF16_TFLOPS * 1e12
        else:
            peak = matmul_peak_gflops(torch.bfloat16 if dtype == "bf16" else torch.float32, clock=clock) * 1e9
        for name in args.configs.split(","):
            result = bench_config(name, dtype, args, device, peak, clock)
            results.append(result)
            print(line(result), flush=True)
            if args.verbose:
                print(f"  rows {result['rows']} x {result['seq_len']}, accumulation {result['accumulation']:g}, "
                      f"peak {result['peak_gflops']:,.0f} GFLOP/s, {result['threads']} threads")
                for who in ("picochat", "nanoGPT"):
                    timings = result[who]
                    print(f"  {who}: micro-batch s {[round(s, 3) for s in timings['micro_seconds']]}, "
                          f"optimizer s {[round(s, 3) for s in timings['optimizer_seconds']]}, "
                          f"{timings['flops_per_token'] / 1e6:.1f} MFLOP/token, MFU {timings['mfu']:.1f}%")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
