"""Small helpers every training stage shares: device and dtype choice, seeding and RNG state
capture (for exact resume), torch.compile policy, the hardware peak used for MFU, and DDP setup.

Nothing here knows about files or configs beyond the few fields it is handed.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import random
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

# ---------------------------------------------------------------------------------------------
# device, dtype, compile


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" picks CUDA when present, then Apple's MPS, then the CPU. Under torchrun each rank
    takes the GPU of its local rank."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def autocast_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype | None:
    """The autocast dtype for a [train] dtype setting: auto = bf16 on CUDA, fp32 elsewhere
    (CPU bf16 autocast is opt-in: it is slower than fp32 on many CPUs)."""
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype == "auto" and device.type == "cuda":
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: str = "auto"):
    """A context manager: bf16 autocast where `autocast_dtype` says so, else nothing."""
    chosen = autocast_dtype(device, dtype)
    if chosen is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=chosen)


def dtype_name(device: torch.device, dtype: str = "auto") -> str:
    """What the forward passes compute in, for logs: float32 or bfloat16."""
    chosen = autocast_dtype(device, dtype)
    return "float32" if chosen is None else str(chosen).removeprefix("torch.")


def use_compile(setting: str, device: torch.device) -> bool:
    """[train] compile: auto compiles on CUDA only (on CPU the compile time outweighs the gain for
    the small models a CPU trains)."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    return device.type == "cuda"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers (what checkpoints store)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# seeds and RNG state (saved in meta.json so a resumed run draws the same random numbers)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(bytes(tensor.cpu().tolist())).decode()  # a few kB: no numpy needed


def _unb64(text: str) -> torch.Tensor:
    return torch.tensor(list(base64.b64decode(text)), dtype=torch.uint8)


def capture_rng_states() -> dict[str, object]:
    """torch CPU, CUDA (every device) and Python's RNG states as JSON-safe base64 strings."""
    states: dict[str, object] = {"torch_cpu": _b64(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch_cuda"] = [_b64(state) for state in torch.cuda.get_rng_state_all()]
    python_state = random.getstate()
    states["python"] = base64.b64encode(json.dumps([python_state[0], list(python_state[1]),
                                                    python_state[2]]).encode()).decode()
    return states


def restore_rng_states(states: dict[str, object] | None) -> None:
    if not states:
        return
    if "torch_cpu" in states:
        torch.set_rng_state(_unb64(states["torch_cpu"]))
    cuda_states = states.get("torch_cuda")
    if cuda_states and torch.cuda.is_available():
        for index, state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(_unb64(state), index)
    if "python" in states:
        version, internal, gauss = json.loads(base64.b64decode(states["python"]))
        random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------------------------------
# MFU: model FLOPs utilization against the hardware's peak


# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12,
             "RTX 4090": 165e12, "RTX 3090": 71e12}


@functools.lru_cache(maxsize=4)
def peak_flops(device_type: str, device_name: str = "") -> float | None:
    """The peak MFU is measured against: a table for known GPUs, and for the CPU a quick measured
    fp32 matmul rate (about 0.1 s, once per process). None when unknown."""
    if device_type == "cuda":
        for key, value in GPU_PEAKS.items():
            if key in device_name:
                return value
        return None
    if device_type != "cpu":
        return None
    # The best single matmul, not the mean: on a busy machine the mean measures the other jobs
    # too, and an underestimated peak would show MFU above 100%.
    size = 1024
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up the thread pool and kernel choice
    best = float("inf")
    start = time.perf_counter()
    while time.perf_counter() - start < 0.3:
        tick = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tick)
    return 2 * size**3 / best


# ---------------------------------------------------------------------------------------------
# distributed data parallel (torchrun)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_setting: str = "auto") -> DistInfo:
    """Under torchrun (WORLD_SIZE > 1) join the process group: nccl for CUDA, gloo on the CPU.
    A plain `picochat pretrain` is world size 1 and touches nothing."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_setting, local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def cleanup_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
