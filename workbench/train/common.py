"""Small helpers every training stage shares: device and dtype choice, seeding and RNG state
capture (for exact resume), torch.compile policy, the hardware peak used for MFU, memory figures,
and distributed setup (torchrun: DDP, or FSDP2 sharding with whole-tensor gathers for checkpoints).

Nothing here knows about files or configs beyond the few fields it is handed.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import functools
import json
import os
import random
import time
import warnings
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


# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by the exact name torch.cuda.get_device_name
# reports (NVIDIA's datasheets; the sparse figures they headline are twice these). Exact names, not
# substrings: "H100 PCIe" and "H200 NVL" run slower clocks than the SXM parts whose names they
# contain, and "A10G" (AWS) is not the A10.
GPU_PEAKS = {
    "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A10G": 70e12,  # AWS's A10 variant: 70 dense (the A10 is 125)
    "NVIDIA A10": 125e12,
    "NVIDIA L4": 121e12,
    "NVIDIA L40S": 362e12,
    "NVIDIA GeForce RTX 4090": 165e12,
    "NVIDIA GeForce RTX 3090": 71e12,
    "NVIDIA H100 80GB HBM3": 989e12,  # the SXM part's name
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12,  # the SXM part's name
    "NVIDIA H200 NVL": 835e12,
    "NVIDIA B200": 2250e12,
    "AMD Instinct MI300X": 1307e12,
}


def gpu_peak_flops(device_name: str) -> float | None:
    """The table's peak for this exact device name (case and spaces aside); None, with a warning
    (so MFU is left out rather than wrong), for a name the table does not know."""
    wanted = " ".join(device_name.split()).lower()
    for name, value in GPU_PEAKS.items():
        if name.lower() == wanted:
            return value
    warnings.warn(f"no peak FLOP/s known for GPU {device_name!r}: MFU is not reported "
                  f"(add it to GPU_PEAKS in workbench/train/common.py)", stacklevel=2)
    return None


@functools.lru_cache(maxsize=4)
def peak_flops(device_type: str, device_name: str = "", dtype: str = "float32") -> float | None:
    """The peak MFU is measured against: the GPU table (gpu_peak_flops), and for the CPU a quick
    measured matmul rate in the dtype training computes in (bf16 autocast runs 1.6-2x the fp32 rate
    on CPUs with native bf16, so an fp32 peak showed MFU above 100%), about 0.3 s once per process.
    A busy machine measures it low: the training loop raises it to the best rate a step reaches.
    None when unknown."""
    if device_type == "cuda":
        return gpu_peak_flops(device_name)
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
# memory telemetry


def device_memory(device: torch.device) -> dict[str, int | None]:
    """Memory this process holds, in bytes, for the train records: on CUDA the peak allocated by
    tensors since start (what a larger batch would need) and what the caching allocator reserved
    (what nvidia-smi shows); on the CPU the peak resident set size, nothing reserved."""
    if device.type == "cuda":
        return {"peak_memory": torch.cuda.max_memory_allocated(device),
                "reserved_memory": torch.cuda.memory_reserved(device)}
    try:
        import resource

        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    except (ImportError, OSError):
        return {"peak_memory": None, "reserved_memory": None}
    return {"peak_memory": peak_kib * 1024, "reserved_memory": None}


def device_total_memory(device: torch.device) -> int | None:
    """The device's memory in bytes (the machine's RAM for the CPU), for the sys record."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------
# distributed training (torchrun): DDP or FSDP2


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mode: str = "ddp"  # [train] distributed: "ddp" or "fsdp" (how the model is spread, world_size > 1)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """FSDP: parameters, gradients and optimizer state are split among the ranks."""
        return self.enabled and self.mode == "fsdp"


def setup_distributed(device_setting: str = "auto", mode: str = "ddp",
                      timeout_seconds: float | None = None) -> DistInfo:
    """Under torchrun (WORLD_SIZE > 1) join the process group: nccl for CUDA, gloo on the CPU.
    A plain `picochat pretrain` is world size 1 and touches nothing. timeout_seconds ([train]
    dist_timeout) bounds how long a collective waits for a rank that is gone (a node lost in a
    multi-node run) before every rank fails instead of hanging."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(mode=mode)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_setting, local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = datetime.timedelta(seconds=timeout_seconds) if timeout_seconds else None
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, mode=mode)


def broadcast_from_main(value, info: DistInfo):
    """Rank 0's value (any picklable object) on every rank: one decision everyone follows."""
    if not info.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(value, info: DistInfo) -> list:
    """Every rank's value, in rank order, on every rank."""
    if not info.enabled:
        return [value]
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def shard_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """FSDP2: fully_shard each block, then the root (embedding, head, scalars), in place. On CUDA
    the parameters are gathered in bf16 for the matmuls and gradients reduced in float32 (the
    sharded float32 parameters stay the optimizer's master copy); on the CPU all float32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights of a model, on the CPU, whether FSDP shards it or not: every rank must
    call it under FSDP (the shards are gathered), and every rank gets the same tensors."""
    from torch.distributed.tensor import DTensor

    state = {}
    for name, tensor in model.state_dict().items():
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        state[name] = tensor.detach().cpu()
    return state


@torch.no_grad()
def load_full_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Whole weights (a checkpoint's) into a model, each rank keeping its shard under FSDP."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for name, param in model.state_dict().items():
        whole = tensors[name].to(device=param.device if not isinstance(param, DTensor)
                                 else param.to_local().device, dtype=param.dtype)
        if isinstance(param, DTensor):
            whole = distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None)
        param.copy_(whole)


def cleanup_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
