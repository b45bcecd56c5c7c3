"""Memory bandwidth of this machine, as torch sees it: the ceiling for batch-1 decoding.

Decoding one token reads every weight once, so tokens/s can never beat
bandwidth / bytes of weights (unless the weights fit in cache). `read_bandwidth()` streams a
buffer much larger than the last-level cache through a reduction (`sum`), the access pattern of a
matrix-vector product, and keeps the best of a few repeats.

    python bench/membw.py      ->  membw cpu: read 14.2 GB/s, copy 9.8 GB/s (256 MiB buffer, 2 threads)
"""

from __future__ import annotations

import time

import torch


def _best_seconds(fn, repeats: int, clock=time.perf_counter) -> float:
    fn()  # warm up (page faults, thread pool)
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def read_bandwidth(megabytes: int = 256, repeats: int = 7, device: str = "cpu", clock=time.perf_counter) -> float:
    """Bytes per second read by a streaming reduction over a `megabytes` float32 buffer."""
    buffer = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    sync = torch.cuda.synchronize if buffer.is_cuda else (lambda: None)

    def read():
        buffer.sum()
        sync()

    return buffer.numel() * 4 / _best_seconds(read, repeats, clock)


def copy_bandwidth(megabytes: int = 256, repeats: int = 7, device: str = "cpu") -> float:
    """Bytes per second moved (read + written) by copying a `megabytes` buffer."""
    source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    sync = torch.cuda.synchronize if source.is_cuda else (lambda: None)

    def copy():
        target.copy_(source)
        sync()

    return 2 * source.numel() * 4 / _best_seconds(copy, repeats)


if __name__ == "__main__":
    read, copy = read_bandwidth(), copy_bandwidth()
    print(f"membw cpu: read {read / 1e9:.1f} GB/s, copy {copy / 1e9:.1f} GB/s "
          f"(256 MiB buffer, {torch.get_num_threads()} threads)")
