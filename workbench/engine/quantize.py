"""INT8 weight-only quantization: `picochat quantize CHECKPOINT [--out PATH]`.

Every nn.Linear's weight becomes int8 with one float scale per output channel (symmetric,
scale = max|w| / 127 of the row), stored as such in the checkpoint's model.safetensors
(`NAME.weight` int8, `NAME.weight_scale` float32); embeddings and scalars stay float. meta.json
says quantization = "int8", and `load_checkpoint` rebuilds the model through `load_int8_state`,
so every consumer (chat, serve, evals) runs INT8 checkpoints like any other.

At inference `Int8Linear` multiplies by the int8 weight directly where torch has a kernel for it
(`torch._weight_int8pack_mm` on CPU), so a decode step reads 1 byte per weight instead of 4;
elsewhere it dequantizes on the fly (the scale applied after the matmul, per output channel).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.errors import BadInput

_INT8_MM = hasattr(torch, "_weight_int8pack_mm")


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (int8 [out, in], float32 scale [out]), symmetric per output channel."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return quantized, scale


class Int8Linear(nn.Module):
    """A bias-free linear layer whose weight is int8 with per-output-channel scales.

    On CPU it calls torch's int8 weight-only kernel (`_weight_int8pack_mm`), which is fast with
    bf16 activations only (with fp32 ones it is ~10x slower than an fp32 matmul on this class of
    machine, measured), so fp32 activations go through it as bf16 and come back as fp32: the
    activation rounding is far below the weights' quantization error. Elsewhere (CUDA, MPS) the
    weight is dequantized on the fly, the scale applied after the matmul."""

    def __init__(self, in_features: int, out_features: int, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        # the scale as the CPU kernel wants it; derived, so not saved (refreshed when loaded)
        self.register_buffer("scale_bf16", torch.ones(out_features, dtype=torch.bfloat16, device=device),
                             persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        if linear.bias is not None:
            raise ValueError("Int8Linear supports bias-free linears only (every picochat linear is)")
        module = cls(linear.in_features, linear.out_features, device=linear.weight.device)
        quantized, scale = quantize_weight(linear.weight)
        module.weight.copy_(quantized)
        module.weight_scale.copy_(scale)
        module.scale_bf16.copy_(scale)
        return module

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        with torch.no_grad():
            self.scale_bf16.copy_(self.weight_scale)

    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        return self.weight.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features)
        if _INT8_MM and x.device.type == "cpu":
            y = torch._weight_int8pack_mm(x.to(torch.bfloat16), self.weight, self.scale_bf16).to(x.dtype)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self.weight_scale.to(x.dtype)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    return [(parent, name, child) for parent in model.modules()
            for name, child in parent.named_children() if isinstance(child, nn.Linear)]


def quantize_model(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by an Int8Linear holding its quantized weight."""
    for parent, name, linear in _linears(model):
        setattr(parent, name, Int8Linear.from_linear(linear))
    return model


def load_int8_state(model: nn.Module, checkpoint_path) -> nn.Module:
    """Turn a freshly built float model into the INT8 model stored at checkpoint_path (a folder
    with model.safetensors of int8 weights and scales). Used by load_checkpoint."""
    from workbench.train.checkpoint import check_shapes, read_tensors

    path = Path(checkpoint_path) / "model.safetensors"
    for parent, name, linear in _linears(model):
        setattr(parent, name, Int8Linear(linear.in_features, linear.out_features))
    tensors = read_tensors(path)
    check_shapes(path, model, tensors, getattr(model, "vocab_size", -1))
    expected = model.state_dict()
    for name, tensor in tensors.items():
        if tensor.dtype != expected[name].dtype and not (tensor.is_floating_point() and expected[name].is_floating_point()):
            raise BadInput(f"{path}: {name} is {tensor.dtype}, an INT8 checkpoint stores "
                           f"{expected[name].dtype} there")
    model.load_state_dict(tensors, strict=True)
    return model


def default_output(checkpoint: Path) -> Path:
    """RUN/int8/step_N for a run's checkpoint (not under checkpoints/, so training never resumes
    from it), else a sibling folder NAME-int8."""
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "int8" / checkpoint.name
    return checkpoint.with_name(checkpoint.name + "-int8")


def quantize_checkpoint(spec, out: str | Path | None = None) -> Path:
    """Write an INT8 copy of a checkpoint (atomically: a temporary folder renamed at the end)."""
    from workbench.train.checkpoint import load_checkpoint, save_tensors, write_json

    checkpoint = load_checkpoint(spec, device="cpu")
    if checkpoint.meta.get("quantization") == "int8":
        raise BadInput(f"{checkpoint.path}: already an INT8 checkpoint")
    model = quantize_model(checkpoint.model)
    out = Path(out) if out else default_output(checkpoint.path)
    temporary = out.with_name(f".tmp-{out.name}")
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    save_tensors(model.state_dict(), temporary / "model.safetensors", metadata={"quantization": "int8"})
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(checkpoint.path / name, temporary / name)
    meta = {key: value for key, value in checkpoint.meta.items() if key not in ("loader_state", "rng_states")}
    meta.update(quantization="int8", quantized_from=str(checkpoint.path.resolve()), created=time.time())
    write_json(temporary / "meta.json", meta)
    if out.exists():
        shutil.rmtree(out)
    os.replace(temporary, out)
    return out


# ---------------------------------------------------------------------------------------------
# the CLI verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/int8/step_N)")
    parser.add_argument("--eval-tokens", type=int, default=32768,
                        help="validation tokens for the bpb comparison (0: skip it)")
    parser.add_argument("--decode-tokens", type=int, default=64, help="tokens for the decode speed comparison")


def run(args: argparse.Namespace) -> int:
    from workbench.train.checkpoint import load_checkpoint, resolve_checkpoint

    source = resolve_checkpoint(args.checkpoint)
    out = quantize_checkpoint(source, args.out)
    original_bytes = (source / "model.safetensors").stat().st_size
    int8_bytes = (out / "model.safetensors").stat().st_size
    print(f"wrote {out}")
    print(f"model.safetensors: {original_bytes / 1e6:.2f} MB -> {int8_bytes / 1e6:.2f} MB "
          f"({int8_bytes / original_bytes:.2f}x)")
    original, quantized = load_checkpoint(source), load_checkpoint(out)
    if args.decode_tokens > 0:
        speeds = [decode_speed(c.model, args.decode_tokens) for c in (original, quantized)]
        print(f"decode, batch 1, cpu: {speeds[0]:.1f} tok/s -> {speeds[1]:.1f} tok/s ({speeds[1] / speeds[0]:.2f}x)")
    if args.eval_tokens > 0:
        try:
            bpbs = [validation_bpb(c, args.eval_tokens) for c in (original, quantized)]
        except (BadInput, ValueError) as error:
            print(f"bpb: skipped ({error})")
        else:
            print(f"val bpb: {bpbs[0]:.4f} -> {bpbs[1]:.4f} (difference {bpbs[1] - bpbs[0]:+.4f})")
    return 0


def decode_speed(model, tokens: int) -> float:
    """Batch-1 decode tokens/s with the KV cache."""
    from workbench.engine.engine import measure_speed

    return measure_speed(model, prompt_tokens=16, new_tokens=tokens)["decode_tokens_per_second"]


def validation_bpb(checkpoint, max_tokens: int) -> float:
    from workbench.evals.bpb import evaluate_bpb, val_batches

    batches = val_batches(checkpoint.config, checkpoint.tokenizer, batch_size=8, max_tokens=max_tokens)
    return evaluate_bpb(checkpoint.model, checkpoint.tokenizer, batches, "cpu", max_tokens, dtype="float32")
