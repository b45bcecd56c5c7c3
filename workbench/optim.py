"""Muon for the hidden matrices, AdamW for everything else, and the learning-rate schedule.

The recipe is nanochat's:
- Muon (momentum 0.95, warmed up from 0.85 over the first 300 steps; Nesterov) on every 2-D weight
  inside the blocks. Its update is the momentum orthogonalized by five Newton-Schulz quintic
  iterations, scaled by max(1, rows / cols) ** 0.5 so tall and wide matrices move alike. The
  iterations run in bf16 on GPUs and on CPUs with bf16 arithmetic (avx512_bf16 / AMX: 2.2x the
  fp32 matmul speed on this project's test machine), in fp32 on other CPUs, where bf16 is emulated.
  [train] weight_decay is decoupled decay on these matrices only.
- AdamW (betas 0.8 / 0.95, eps 1e-10, no weight decay) on the embedding, the head and the scalars.
  One departure: the scalars get eps 1e-8. At init every block is the identity and the final
  RMSNorm cancels any common scale, so their true gradient is exactly zero and what autograd
  returns is rounding noise (1e-11 to 1e-10); with eps 1e-10 Adam's first step turned that noise's
  sign into up to half a full step, differently for every batch split (DDP vs accumulation).
  With 1e-8 the noise moves them by ~1% of a step, and real gradients (>= 1e-6 after the first
  step) are untouched: val loss on the tiny corpus was the same to seed noise.
- Learning rates from [train]: matrix_lr (Muon), embedding_lr, unembedding_lr, scalar_lr. As in
  nanochat, the embedding and head rates are scaled by (width / 768) ** -0.5, since they were tuned
  at width 768 and Adam's step size does not shrink with width on its own. Scalars: the x0 mixing
  weights get scalar_lr, the residual multipliers scalar_lr * 0.01 (they scale the whole stream, so a
  full-size step would swamp it). Every rate is then multiplied by lr_scale and the schedule.

Under FSDP2 (train.distributed = "fsdp") the parameters and gradients are DTensor shards: the AdamW
updates and Muon's momentum are elementwise and run on each rank's shard; the Newton-Schulz step
needs whole matrices, so each rank owns whole matrices in turn (_orthogonalize_sharded).

Which parameter is which comes from the model's `param_groups()` (workbench/model.py); a parameter
left out of it, or named twice, is a bug and fails loudly here.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from workbench.errors import BadInput

MUON_MOMENTUM = 0.95
MUON_MOMENTUM_START = 0.85
MUON_MOMENTUM_WARMUP_STEPS = 300
ADAM_BETAS = (0.8, 0.95)
ADAM_EPS = 1e-10
ADAM_EPS_SCALARS = 1e-8  # see the module docstring
REFERENCE_WIDTH = 768  # nanochat tuned its AdamW rates at this width

# group name -> (optimizer, the TrainSection field with its rate, factor, scaled by width?)
GROUP_RULES = {
    "matrix": ("muon", "matrix_lr", 1.0, False),
    "embedding": ("adamw", "embedding_lr", 1.0, True),
    "unembedding": ("adamw", "unembedding_lr", 1.0, True),
    "x0_scalar": ("adamw", "scalar_lr", 1.0, False),
    "resid_scalar": ("adamw", "scalar_lr", 0.01, False),
    "scalar": ("adamw", "scalar_lr", 1.0, False),
}


def lr_multiplier(step: int, total_steps: int, train_cfg) -> float:
    """Linear warmup over warmup_steps, then constant, then a linear warmdown over the last
    warmdown_fraction of the steps, ending at final_lr_fraction. `step` counts from 0."""
    multiplier = 1.0
    if step < train_cfg.warmup_steps:
        multiplier = (step + 1) / train_cfg.warmup_steps
    warmdown = round(train_cfg.warmdown_fraction * total_steps)
    if warmdown > 0 and step > total_steps - warmdown:
        left = max(0.0, (total_steps - step) / warmdown)  # 1 where the warmdown starts, 0 at the end
        floor = train_cfg.final_lr_fraction
        multiplier = min(multiplier, floor + (1.0 - floor) * left)
    return multiplier


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (Linux: avx512_bf16 or amx_bf16 in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximately orthogonal matrix with g's singular vectors ([..., rows, cols], batched):
    the quintic iteration of Muon, tuned to push every singular value into roughly [0.7, 1.2]
    quickly rather than to converge exactly."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.reshape(-1, g.size(-2), g.size(-1))
    x = x.bfloat16() if g.is_cuda or cpu_has_bf16() else x.float()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: the Gram matrix x @ x.T is the smaller one
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)
        # x <- a x + (b gram + c gram^2) x, the scalings folded into the matmuls (baddbmm's beta
        # and alpha): separate elementwise passes cost ~15% of the step on CPU in bf16.
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)
    if tall:
        x = x.mT
    return x.reshape(g.shape).to(g.dtype)


class Optimizers:
    """Both optimizers behind one step / zero_grad / lr / state interface (docs/interfaces.md)."""

    def __init__(self, groups: list[dict], param_names: dict[nn.Parameter, str], weight_decay: float,
                 lr_scale: float):
        self.groups = groups
        self.lr_scale = lr_scale
        self.weight_decay = weight_decay
        self.param_names = param_names
        self.steps_taken = 0
        self.state: dict[nn.Parameter, dict[str, torch.Tensor]] = {}

    # ---- the step ----

    @torch.no_grad()
    def step(self) -> None:
        for group in self.groups:
            if group["kind"] == "muon":
                self._muon_step(group)
            else:
                self._adamw_step(group)
        self.steps_taken += 1

    def zero_grad(self) -> None:
        for group in self.groups:
            for p in group["params"]:
                p.grad = None

    def set_lr_multiplier(self, m: float) -> None:
        for group in self.groups:
            group["lr"] = group["base_lr"] * self.lr_scale * m

    def muon_momentum(self) -> float:
        done = min(1.0, self.steps_taken / MUON_MOMENTUM_WARMUP_STEPS)
        return (1 - done) * MUON_MOMENTUM_START + done * MUON_MOMENTUM

    def _muon_step(self, group: dict) -> None:
        momentum, lr = self.muon_momentum(), group["lr"]
        # Matrices of one shape are orthogonalized together: one batched matmul chain instead of many.
        by_shape: dict[torch.Size, list[nn.Parameter]] = {}
        for p in group["params"]:
            if p.grad is not None:
                by_shape.setdefault(p.shape, []).append(p)
        for shape, params in by_shape.items():
            updates = []
            for p in params:
                buf, grad = self._state(p, "momentum"), _local(p.grad)
                buf.lerp_(grad, 1 - momentum)
                updates.append(grad.lerp(buf, momentum))  # Nesterov: look one momentum step ahead
            if isinstance(params[0], DTensor):
                ortho = _orthogonalize_sharded(params, updates)
            else:
                ortho = newton_schulz(torch.stack(updates))
            scale = max(1.0, shape[-2] / shape[-1]) ** 0.5
            for p, update in zip(params, ortho, strict=True):
                weights = _local(p)
                if self.weight_decay:
                    weights.mul_(1 - lr * self.weight_decay)
                weights.add_(update, alpha=-lr * scale)

    def _adamw_step(self, group: dict) -> None:
        beta1, beta2 = ADAM_BETAS
        lr = group["lr"]
        for p in group["params"]:
            if p.grad is None:
                continue
            weights, grad = _local(p), _local(p.grad)  # elementwise: a shard updates on its own
            exp_avg, exp_avg_sq = self._state(p, "exp_avg"), self._state(p, "exp_avg_sq")
            count = self._state(p, "step", shape=())
            count += 1
            t = count.item()
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq / (1 - beta2**t)).sqrt_().add_(group["eps"])
            weights.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**t))

    def _state(self, p: nn.Parameter, key: str, shape=None) -> torch.Tensor:
        """A state slot: shaped like the parameter's local shard under FSDP (a plain tensor)."""
        slots = self.state.setdefault(p, {})
        if key not in slots:
            if shape is None:
                local = _local(p)
                slots[key] = torch.zeros(local.shape, dtype=torch.float32, device=local.device)
            else:  # a step counter: kept on the CPU so reading it never waits for the GPU
                slots[key] = torch.zeros(shape, dtype=torch.float32)
        return slots[key]

    # ---- resumable state: flat tensors for safetensors ----

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything a resumed run needs, keyed "PARAM_NAME.SLOT" plus "steps_taken". Under FSDP
        every rank must call it (the shards are gathered into whole tensors: the same file as one
        process writes)."""
        tensors = {"steps_taken": torch.tensor(self.steps_taken, dtype=torch.int64)}
        for p, slots in self.state.items():
            for key, value in slots.items():
                if isinstance(p, DTensor) and key != "step":
                    value = DTensor.from_local(value, p.device_mesh, p.placements, shape=p.shape,
                                               stride=p.stride()).full_tensor()
                tensors[f"{self.param_names[p]}.{key}"] = value.detach().cpu().contiguous()
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore state_tensors() output; raises BadInput when it does not fit this model."""
        by_name = {name: p for p, name in self.param_names.items()}
        if "steps_taken" not in tensors:
            raise BadInput("optimizer state: 'steps_taken' is missing")
        state: dict[nn.Parameter, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key == "steps_taken":
                continue
            name, _, slot = key.rpartition(".")
            p = by_name.get(name)
            if p is None or slot not in ("momentum", "exp_avg", "exp_avg_sq", "step"):
                raise BadInput(f"optimizer state: unexpected entry {key!r} (saved for a different model?)")
            expected = () if slot == "step" else p.shape
            if tuple(value.shape) != tuple(expected):
                raise BadInput(f"optimizer state: {key} has shape {tuple(value.shape)}, "
                               f"the model needs {tuple(expected)}")
            if slot == "step":
                value = value.to(dtype=torch.float32).clone()
            else:
                value = _shard_like(p, value.to(device=_local(p).device, dtype=torch.float32))
            state.setdefault(p, {})[slot] = value
        self.state = state
        self.steps_taken = int(tensors["steps_taken"])


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP parameter or gradient (a DTensor); a plain tensor as it is.
    The optimizers work on local tensors only: DTensor and torch.Tensor do not mix in one op."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _shard_like(p: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """The part of a whole tensor that p's shard holds (p itself when p is not sharded)."""
    if not isinstance(p, DTensor):
        return whole.clone()
    return distribute_tensor(whole, p.device_mesh, p.placements, src_data_rank=None).to_local().clone()


def _row_split(rows: int, ranks: int) -> list[int]:
    """Rows of each rank's shard of a dim-0 sharded matrix (torch.chunk's split, as FSDP's)."""
    sizes = [len(chunk) for chunk in torch.arange(rows).chunk(ranks)]
    return sizes + [0] * (ranks - len(sizes))


def _exchange(sends: list[torch.Tensor], receive_shapes: list[tuple[int, int]], group) -> list[torch.Tensor]:
    """All-to-all of 2-D blocks: sends[j] goes to rank j, and the block from rank i (of shape
    receive_shapes[i]) comes back at index i. One all_to_all_single over flat buffers: gloo's
    list all_to_all wants equal sizes, and shards of uneven rows are not."""
    payload = torch.cat([t.reshape(-1) for t in sends])
    received = payload.new_empty(sum(rows * cols for rows, cols in receive_shapes))
    torch.distributed.all_to_all_single(received, payload, [rows * cols for rows, cols in receive_shapes],
                                        [t.numel() for t in sends], group=group)
    blocks = received.split([rows * cols for rows, cols in receive_shapes])
    return [block.view(shape) for block, shape in zip(blocks, receive_shapes, strict=True)]


def _orthogonalize_sharded(params: list[DTensor], updates: list[torch.Tensor]) -> list[torch.Tensor]:
    """Muon under FSDP (as nanochat's distributed Muon): the matrices of one shape are dealt to the
    ranks in turn (matrix i to rank i mod W), each rank gathers the shards of its own matrices
    (one all-to-all), orthogonalizes them whole, and sends every rank its shard of the results
    (another). Every matrix is orthogonalized once, whole, so the update is one process's.
    `updates` are this rank's shards; returns this rank's shards of the orthogonalized ones."""
    mesh = params[0].device_mesh
    group, ranks, rank = mesh.get_group(), mesh.size(), mesh.get_local_rank()
    rows, cols = params[0].shape
    split = _row_split(rows, ranks)
    empty = updates[0].new_zeros(split[rank], cols)
    gathered = []
    for first in range(0, len(updates), ranks):  # one round per W matrices
        sends = [updates[first + j] if first + j < len(updates) else empty for j in range(ranks)]
        shards = _exchange(sends, [(split[i], cols) for i in range(ranks)], group)
        gathered.append(torch.cat(shards) if first + rank < len(updates) else None)
    owned = [whole for whole in gathered if whole is not None]
    ortho = list(newton_schulz(torch.stack(owned))) if owned else []
    results = []
    for first, whole in zip(range(0, len(updates), ranks), gathered, strict=True):
        mine = ortho.pop(0) if whole is not None else updates[0].new_zeros(rows, cols)
        sends = list(mine.split(split))
        results += _exchange(sends, [(split[rank], cols)] * ranks, group)[: len(updates) - first]
    return results


def build_optimizer(model: nn.Module, train_cfg, lr_scale: float = 1.0) -> Optimizers:
    """Muon + AdamW over the model's param_groups(), rates from [train] (see the module docstring)."""
    param_names = {p: name for name, p in model.named_parameters()}
    width_scale = (model.config.width / REFERENCE_WIDTH) ** -0.5
    groups, seen = [], set()
    for name, params in model.param_groups().items():
        if name not in GROUP_RULES:
            raise ValueError(f"{type(model).__name__}.param_groups(): unknown group {name!r}")
        kind, lr_field, factor, width_scaled = GROUP_RULES[name]
        base_lr = getattr(train_cfg, lr_field) * factor * (width_scale if width_scaled else 1.0)
        for p in params:
            if p in seen:
                raise ValueError(f"parameter {param_names[p]} is in two optimizer groups")
            if kind == "muon" and p.ndim != 2:
                raise ValueError(f"Muon needs 2-D matrices; {param_names[p]} has shape {tuple(p.shape)}")
            seen.add(p)
        eps = ADAM_EPS_SCALARS if lr_field == "scalar_lr" else ADAM_EPS
        groups.append({"name": name, "kind": kind, "params": list(params), "base_lr": base_lr,
                       "lr": base_lr * lr_scale, "eps": eps})
    missing = [name for p, name in param_names.items() if p not in seen]
    if missing:
        raise ValueError(f"parameters without an optimizer group: {', '.join(missing)}")
    return Optimizers(groups, param_names, train_cfg.weight_decay, lr_scale)
