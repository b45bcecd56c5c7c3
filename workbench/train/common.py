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


def _unb64(text: object, name: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{name}: must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error
        raise ValueError(f"{name}: not valid base64") from None


def _unb64_tensor(text: object, name: str) -> torch.Tensor:
    return torch.tensor(list(_unb64(text, name)), dtype=torch.uint8)


def capture_rng_states() -> dict[str, object]:
    """torch CPU, CUDA (every device) and Python's RNG states as JSON-safe base64 strings."""
    states: dict[str, object] = {"torch_cpu": _b64(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch_cuda"] = [_b64(state) for state in torch.cuda.get_rng_state_all()]
    python_state = random.getstate()
    states["python"] = base64.b64encode(json.dumps([python_state[0], list(python_state[1]),
                                                    python_state[2]]).encode()).decode()
    return states


def decode_rng_states(states: object) -> dict[str, object]:
    """What capture_rng_states wrote (read back from meta.json), as the states torch and random
    take: {"torch_cpu": tensor, "torch_cuda": [tensor], "python": tuple}. ValueError naming the
    entry when anything is off, so garbage is refused before any generator is touched."""
    if states is None:
        return {}
    if not isinstance(states, dict):
        raise ValueError("must be an object")
    decoded: dict[str, object] = {}
    if "torch_cpu" in states:
        cpu = _unb64_tensor(states["torch_cpu"], "torch_cpu")
        if cpu.numel() != torch.get_rng_state().numel():
            raise ValueError(f"torch_cpu: {cpu.numel()} bytes, a torch CPU generator state has "
                             f"{torch.get_rng_state().numel()}")
        decoded["torch_cpu"] = cpu
    if states.get("torch_cuda") is not None:
        if not isinstance(states["torch_cuda"], list):
            raise ValueError("torch_cuda: must be a list")
        decoded["torch_cuda"] = [_unb64_tensor(state, f"torch_cuda[{index}]")
                                 for index, state in enumerate(states["torch_cuda"])]
        if torch.cuda.is_available():  # a CUDA state's size is fixed; only a CUDA build can say it
            size = torch.cuda.get_rng_state(0).numel()
            if any(state.numel() != size for state in decoded["torch_cuda"]):
                raise ValueError(f"torch_cuda: a CUDA generator state has {size} bytes")
    if "python" in states:
        decoded["python"] = _decode_python_state(states["python"])
    return decoded


def _decode_python_state(text: object) -> tuple:
    try:
        version, internal, gauss = json.loads(_unb64(text, "python"))
    except (ValueError, TypeError, RecursionError):  # not JSON, not three entries
        raise ValueError("python: not a saved random.getstate()") from None
    expected = random.getstate()
    if (version != expected[0] or not isinstance(internal, list) or len(internal) != len(expected[1])
            or not all(type(word) is int and 0 <= word < 2**32 for word in internal)
            or not (gauss is None or type(gauss) in (int, float))):
        raise ValueError("python: not a saved random.getstate()")
    return version, tuple(internal), gauss


def restore_rng_states(states: dict[str, object] | None) -> None:
    """Put back what capture_rng_states saved (ValueError on garbage, see decode_rng_states)."""
    decoded = decode_rng_states(states)
    if "torch_cpu" in decoded:
        torch.set_rng_state(decoded["torch_cpu"])
    if decoded.get("torch_cuda") and torch.cuda.is_available():
        for index, state in enumerate(decoded["torch_cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)
    if "python" in decoded:
        random.setstate(decoded["python"])


# ---------------------------------------------------------------------------------------------
# MFU: model FLOPs utilization against the hardware's peak


# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12,
             "RTX 4090": 165e12, "RTX 3090": 71e12}


@functools.lru_cache(maxsize=4)
def peak_flops(device_type: str, device_name: str = "", dtype: str = "float32") -> float | None:
    """The peak MFU is measured against: a table for known GPUs, and for the CPU a quick measured
    matmul rate in the dtype training computes in (bf16 autocast runs 1.6-2x the fp32 rate on CPUs
    with native bf16, so an fp32 peak showed MFU above 100%), about 0.3 s once per process. A busy
    machine measures it low: the training loop raises it to the best rate a step reaches. None
    when unknown."""
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
    matmul_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    a, b = torch.randn(size, size, dtype=matmul_dtype), torch.randn(size, size, dtype=matmul_dtype)
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
