"""INT8 weight-only linear layers: `Int8Linear` and `quantize_model`, which swaps them in.

Every nn.Linear's weight becomes int8 with one float scale per output channel (symmetric,
scale = max|w| / 127 of the row); embeddings and scalars stay float. A quantized checkpoint stores
them as such (workbench.checkpoint: `NAME.weight` int8, `NAME.weight_scale` float32, meta.json
quantization = "int8"), so every consumer (chat, serve, evals) runs INT8 checkpoints like any other.

At inference `Int8Linear` multiplies by the int8 weight directly where torch has a kernel for it
(`torch._weight_int8pack_mm` on CPU), so a decode step reads 1 byte per weight instead of 4;
elsewhere it dequantizes on the fly (the scale applied after the matmul, per output channel).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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


def int8_layout(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of a freshly built float model (in place) by an empty Int8Linear of
    the same shape: the model an INT8 checkpoint's tensors load into."""
    for parent, name, linear in _linears(model):
        setattr(parent, name, Int8Linear(linear.in_features, linear.out_features))
    return model
