"""This machine's matmul peak in GFLOP/s: the denominator of MFU on CPU.

    python bench/matmul_peak.py            # fp32 and bf16 on the CPU (and the GPU when there is one)

Square matmuls of a few sizes, best of several timed repeats after a warmup; a real training step
never beats this, so MFU = achieved FLOP/s / this figure. Importable: `matmul_peak_gflops(dtype, device)`.
"""

from __future__ import annotations

import argparse
import time

import torch

GPU_PEAK_BF16_TFLOPS = 989.0  # H100 / H200 SXM dense bf16 (the datasheet figure nanochat uses)


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, device: str = "cpu", sizes=(512, 1024, 2048),
                       min_seconds: float = 0.3, clock=time.perf_counter) -> float:
    """Best GFLOP/s of an n x n @ n x n matmul over `sizes`, each timed for at least `min_seconds`.
    clock=time.process_time measures CPU time instead of wall time: with one thread, that is what an
    idle machine would show even when others share it."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        for _ in range(2):  # warmup: thread pool, kernel selection
            torch.matmul(a, b, out=out)
        _sync(device)
        elapsed = 0.0
        while elapsed < min_seconds:
            start = clock()
            torch.matmul(a, b, out=out)
            _sync(device)
            seconds = clock() - start
            elapsed += seconds
            best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time (use with --threads 1 on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.").replace("float32", "fp32").replace("bfloat16", "bf16")
        gflops = matmul_peak_gflops(dtype, clock=clock)
        print(f"matmul peak cpu {name} ({threads} threads, {args.clock} clock): {gflops:,.1f} GFLOP/s")
    if torch.cuda.is_available():
        measured = matmul_peak_gflops(torch.bfloat16, "cuda", sizes=(4096, 8192)) / 1e3
        print(f"matmul peak cuda bf16: {measured:,.1f} TFLOP/s measured (datasheet {GPU_PEAK_BF16_TFLOPS:,.0f})")


if __name__ == "__main__":
    main()
