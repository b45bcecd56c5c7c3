"""The first thing to run on a GPU machine (under 5 minutes): does picochat's CUDA path do what the
CPU tests say it will?

    python bench/gpu.py [--skip-compile] [--skip-smoke]

1. the device: name, memory, the peak FLOP/s MFU is measured against (None: not in the table);
2. the attention kernel each kind of layer trains with, for d12 and d20, attention = sdpa and flex
   (MATH means SDPA's slow fallback with float32 T x T probabilities);
3. flex_attention against SDPA with a band mask at T = 2048 (d20's heads, window 1024): forward +
   backward time and peak memory of each;
4. one micro-batch of configs/d12.toml and configs/d20.toml at their device_batch_size: peak and
   reserved memory, tok/s and MFU over a few forward + backward passes (compiled, as they train);
5. with 2 or more GPUs: a 4-step torchrun pretraining of a tiny model under DDP and under FSDP on
   all of them, their losses against each other.
On a machine without CUDA it prints this plan and exits 0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from workbench import config as config_module  # noqa: E402
from workbench.model import attend, build_model, training_attention_kernels  # noqa: E402
from workbench.train.common import gpu_peak_flops  # noqa: E402

GIB = 1024**3


def device_report(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device)
    peak = gpu_peak_flops(name)
    total = torch.cuda.get_device_properties(device).total_memory
    print(f"device: {name}, {total / GIB:.1f} GiB, {torch.cuda.device_count()} GPU(s), torch {torch.__version__}, "
          f"peak {'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s bf16'}")
    return peak


def kernel_report(device: torch.device) -> None:
    for name in ("d12", "d20"):
        cfg = config_module.load(REPO / "configs" / f"{name}.toml")
        for kernel in ("sdpa", "flex"):
            cfg.model.attention = kernel
            with torch.device("meta"):
                model = build_model(cfg.model, cfg.tokenizer.vocab_size)
            rows = training_attention_kernels(model, device, torch.bfloat16)
            print(f"attention {name} {kernel:4}: " + "; ".join(
                f"layers {row['layers'][0]}.. window {row['window'] or 'full'}: {row['kernel']}"
                + ("  <-- WARNING: MATH" if row["kernel"] == "MATH" else "") for row in rows))


def timed(fn, repeats: int = 5) -> tuple[float, float]:
    """Best seconds of fn() and its peak memory in GiB."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, torch.cuda.max_memory_allocated() / GIB


def attention_timing(device: torch.device, batch: int = 8, length: int = 2048, window: int = 1024) -> None:
    q = torch.randn(batch, 20, length, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(batch, 10, length, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(batch, 10, length, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    for kernel in ("sdpa", "flex"):
        try:
            seconds, memory = timed(lambda kernel=kernel: attend(q, k, v, window, kernel).sum().backward())
            print(f"attention T={length} window {window} batch {batch}: {kernel:4} {seconds * 1e3:7.2f} ms fwd+bwd, "
                  f"peak {memory:.2f} GiB")
        except Exception as error:  # OOM, a kernel that refuses: report and go on
            print(f"attention {kernel}: FAILED {type(error).__name__}: {str(error).splitlines()[0][:160]}")
        torch.cuda.empty_cache()


def micro_batch(device: torch.device, name: str, peak: float | None, compile_model: bool) -> None:
    cfg = config_module.load(REPO / "configs" / f"{name}.toml")
    rows, length = cfg.train.device_batch_size, cfg.model.seq_len
    torch.cuda.reset_peak_memory_stats()
    try:
        model = build_model(cfg.model, cfg.tokenizer.vocab_size, device=device)
        run = torch.compile(model) if compile_model else model
        idx = torch.randint(0, cfg.tokenizer.vocab_size, (rows, length + 1), device=device)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = run(idx[:, :-1], idx[:, 1:])
            loss.backward()

        started = time.perf_counter()
        step()  # compile and warm up
        torch.cuda.synchronize()
        warmup = time.perf_counter() - started
        seconds, memory = timed(step, repeats=3)
        tokens_per_second = rows * length / seconds
        mfu = f"{100 * model.flops_per_token() * tokens_per_second / peak:.1f}%" if peak else "-"
        print(f"{name}: {rows} x {length} micro-batch, peak {memory:.1f} GiB, reserved "
              f"{torch.cuda.memory_reserved() / GIB:.1f} GiB, {tokens_per_second:,.0f} tok/s, MFU {mfu} "
              f"(first step {warmup:.0f} s{' incl. compile' if compile_model else ''})")
    except torch.cuda.OutOfMemoryError:
        print(f"{name}: OUT OF MEMORY at {rows} x {length} (peak so far "
              f"{torch.cuda.max_memory_allocated() / GIB:.1f} GiB): lower device_batch_size in configs/{name}.toml")
    finally:
        model = run = None
        torch.cuda.empty_cache()


def distributed_smoke(gpus: int) -> None:
    """A tiny pretraining under torchrun on every GPU, DDP then FSDP: both finish, losses agree."""
    from workbench import runs

    with tempfile.TemporaryDirectory() as folder:
        losses = {}
        for mode in ("ddp", "fsdp"):
            path = Path(folder) / f"{mode}.toml"
            path.write_text(f'[run]\nname = "smoke-{mode}"\nout_dir = "{folder}/{mode}"\ndevice = "cuda"\n'
                            f'[data]\nsources = ["{REPO / "assets" / "tiny_corpus.txt"}"]\ndir = "{folder}/data"\n'
                            f'row_group_rows = 16\n[tokenizer]\nvocab_size = 512\npath = "{folder}/tokenizer.json"\n'
                            f'[model]\ndepth = 2\nseq_len = 256\nwindow_pattern = "SL"\n'
                            f'[train]\nsteps = 4\ntotal_batch_tokens = {gpus * 8 * 256}\ndevice_batch_size = 8\n'
                            f'eval_every = 4\neval_tokens = 8192\nsave_every = 4\ndistributed = "{mode}"\n'
                            f'data_streams = {gpus}\ncompile = "off"\n')
            if mode == "ddp":
                for verb in ("prepare", "tokenizer"):
                    subprocess.run([sys.executable, "-m", "workbench.cli", verb, str(path)], check=True,
                                   capture_output=True, cwd=REPO)
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                     "--nproc_per_node", str(gpus), "-m", "workbench.cli", "pretrain", str(path)],
                                    capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=300)
            if result.returncode != 0:
                print(f"torchrun {mode} on {gpus} GPUs: FAILED (exit {result.returncode})\n{result.stderr[-1500:]}")
                continue
            losses[mode] = [r["loss"] for r in runs.read_metrics(Path(folder) / mode, kind="train")]
            print(f"torchrun {mode} on {gpus} GPUs: ok in {time.perf_counter() - started:.0f} s, losses "
                  + " ".join(f"{loss:.4f}" for loss in losses[mode]))
        if len(losses) == 2:
            worst = max(abs(a - b) / abs(a) for a, b in zip(losses["ddp"], losses["fsdp"], strict=True))
            print(f"ddp vs fsdp: largest relative loss difference {worst:.2e} (bf16: expect < 1e-2)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-compile", action="store_true", help="eager micro-batches (faster, less realistic)")
    parser.add_argument("--skip-smoke", action="store_true", help="no torchrun DDP/FSDP smoke")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here, nothing measured. On a GPU machine it would run:")
        print("\n".join("  " + line for line in __doc__.split("\n\n")[2].splitlines()[:-1]))
        return 0
    device = torch.device("cuda", 0)
    peak = device_report(device)
    kernel_report(device)
    attention_timing(device)
    for name in ("d12", "d20"):
        micro_batch(device, name, peak, compile_model=not args.skip_compile)
    gpus = torch.cuda.device_count()
    if args.skip_smoke:
        pass
    elif gpus >= 2:
        distributed_smoke(gpus)
    else:
        print("torchrun smoke: skipped (one GPU; DDP and FSDP need 2 or more)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
