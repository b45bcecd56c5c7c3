"""The picochat GPT, two baselines (bigram, MLP) and the KV cache.

Every model here has the same surface (docs/interfaces.md "Model"): `forward(idx, targets=None,
kv_cache=None, loss_reduction="mean")` returns float32 logits [B, T, V], or the loss when targets are
given (-1 = ignore); `max_context`, `supports_kv_cache`, `num_params()`, `flops_per_token()`,
`init_weights()` and `param_groups()` (which parameters get which optimizer, see workbench/optim.py).

The GPT (nanochat's recipe, written for CPU first):
- token embedding -> RMSNorm -> blocks -> RMSNorm -> untied head -> soft-cap c*tanh(x/c) -> float32.
- a block: x + attn(norm(x)), then x + mlp(norm(x)). Norms have no weights (nothing to learn, nothing
  to decay); attention uses grouped-query heads, rotary embeddings and QK norm; the MLP is ReLU^2.
- residual scalars, one pair per layer as in nanochat: before block i the stream is re-mixed as
  `x = resid_lambdas[i] * x + x0_lambdas[i] * x0`, x0 being the normed token embedding. They start
  at 1.0 and 0.1 (an ordinary residual stream with a weak skip back to the input).
- sliding windows: layer i is "S" or "L" from [model] window_pattern (tiled over the layers, the last
  layer always "L"). An S layer's query sees itself and the short_window - 1 tokens before it; an L
  layer sees the whole causal prefix.
- init like nanochat: output projections (attention c_proj, MLP c_proj) are zero and the head is tiny
  (std 0.001), so every block starts as the identity and the loss at init is ~ln(vocab).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.config import ModelSection
from workbench.errors import BadInput

RMS_EPS = torch.finfo(torch.float32).eps  # F.rms_norm's default for float32


class _RMSNorm(torch.autograd.Function):
    """RMSNorm without weights, with a hand-written backward: autograd's backward of F.rms_norm
    takes about eight passes over the activations on CPU, this one four. Works in the input's
    dtype (bf16 under autocast) with the statistics in float32."""

    @staticmethod
    def forward(ctx, x):
        stats = torch.promote_types(x.dtype, torch.float32)
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=stats) / x.size(-1) ** 0.5
        rstd = torch.rsqrt(rms.square_() + RMS_EPS)
        y = x * rstd.to(x.dtype)
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        y, rstd = ctx.saved_tensors
        # d/dx of x * rstd(x) = rstd * (g - y * mean(g * y))
        mean = (grad * y).sum(-1, keepdim=True, dtype=rstd.dtype) / y.size(-1)
        return torch.addcmul(grad, y, mean.to(y.dtype), value=-1).mul_(rstd.to(y.dtype))


class _ReluSquared(torch.autograd.Function):
    """relu(x) ** 2 in two passes forward and one backward (autograd's square-of-relu takes five)."""

    @staticmethod
    def forward(ctx, x):
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad):
        (r,) = ctx.saved_tensors
        return torch.addcmul(grad.new_zeros(()), grad, r, value=2.0)  # 2 r grad in one pass


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm without weights over the last dimension."""
    return _RMSNorm.apply(x)


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return _ReluSquared.apply(x)


def softcap_logits(logits: torch.Tensor, cap: float) -> torch.Tensor:
    logits = logits.float()
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


CE_CHUNK_BYTES = 2 << 20  # CPU: rows of logits handled at a time, sized to stay in cache
CE_CHUNK_BYTES_GPU = 256 << 20  # GPU: big chunks (launches are the cost), bounding the float32 work buffer


class _SoftcapCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of soft-capped logits, cap * tanh(z / cap), in float32 whatever z's
    dtype: one function instead of five autograd nodes over the biggest tensor of a training step,
    the [N, V] logits. The tricks, each measured on CPU:
    - softmax ignores a constant shift, so cap * tanh(z / cap) = 2 cap * sigmoid(2 z / cap) - cap
      can drop its "- cap", and sigmoid is about six times cheaper than tanh;
    - only the log-probabilities are kept for backward (one [N, V] tensor, like F.cross_entropy),
      and the cap's derivative is rebuilt in their memory;
    - on CPU the rows go through in chunks of ~2 MiB, so the several passes over each chunk hit
      the cache, not memory (on GPU in chunks of 256 MiB, which only bounds the work buffer).
    Together, forward and backward at N=4096, V=8192 on one CPU thread: 211 ms, where
    F.cross_entropy(cap * tanh(z / cap)) takes 731 ms and F.cross_entropy with no cap at all 229 ms."""

    @staticmethod
    def forward(ctx, logits, targets, cap):
        rows, vocab = logits.shape
        chunk = max(1, (CE_CHUNK_BYTES_GPU if logits.is_cuda else CE_CHUNK_BYTES) // (4 * vocab))
        logp = torch.empty(rows, vocab, dtype=torch.float32, device=logits.device)
        lse = torch.empty(rows, 1, dtype=torch.float32, device=logits.device)
        # One float32 work buffer reused by every chunk: a fresh allocation per chunk costs page faults.
        work = torch.empty(min(chunk, rows), vocab, dtype=torch.float32, device=logits.device)
        for start in range(0, rows, chunk):
            end = min(rows, start + chunk)
            shifted = work[:end - start]
            if cap > 0 and logits.dtype == torch.float32:  # shifted = capped + cap
                torch.mul(logits[start:end], 2.0 / cap, out=shifted).sigmoid_().mul_(2.0 * cap)
            elif cap > 0:  # bf16 logits: to float32 first, or the scaling rounds in bf16
                shifted.copy_(logits[start:end]).mul_(2.0 / cap).sigmoid_().mul_(2.0 * cap)
            else:
                shifted.copy_(logits[start:end])
            torch._log_softmax(shifted, 1, False, out=logp[start:end])  # one fused kernel, written in place
            torch.sub(shifted[:, :1], logp[start:end, :1], out=lse[start:end])
        valid = targets >= 0
        safe = targets.clamp(min=0)
        losses = torch.where(valid, -logp.gather(1, safe[:, None]).squeeze(1), 0.0)
        ctx.save_for_backward(logp, lse, safe, valid)
        ctx.cap, ctx.logits_dtype, ctx.chunk, ctx.spent = cap, logits.dtype, chunk, False
        return losses

    @staticmethod
    def backward(ctx, grad_rows):
        if ctx.spent:
            raise RuntimeError("softcapped cross-entropy: backward twice through one graph is not supported")
        ctx.spent = ctx.cap > 0  # the cap's derivative overwrites the saved log-probabilities
        logp, lse, safe, valid = ctx.saved_tensors
        rows, cap = logp.size(0), ctx.cap
        grad = torch.empty(logp.shape, dtype=ctx.logits_dtype, device=logp.device)
        direct = grad.dtype == torch.float32  # else a float32 work buffer, copied into grad per chunk
        work = None if direct else torch.empty(min(ctx.chunk, rows), logp.size(1), device=logp.device)
        row_scale = torch.where(valid, grad_rows, 0.0)[:, None] * (2.0 / cap if cap > 0 else 1.0)
        row_index = torch.arange(min(ctx.chunk, rows), device=logp.device)
        for start in range(0, rows, ctx.chunk):
            end = min(rows, start + ctx.chunk)
            g = torch.exp(logp[start:end], out=grad[start:end] if direct else work[:end - start])  # softmax
            g[row_index[:end - start], safe[start:end]] -= 1
            if cap > 0:
                # d(cap * tanh(z / cap)) / dz = 1 - tanh^2 = 4 s (1 - s), s = sigmoid(2 z / cap) =
                # shifted / (2 cap): shifted * (1 - shifted / (2 cap)), times the 2 / cap in row_scale.
                shifted = logp[start:end].add_(lse[start:end])
                g.mul_(shifted.addcmul_(shifted, shifted, value=-0.5 / cap))
            g.mul_(row_scale[start:end])
            if not direct:
                grad[start:end] = g
        return grad, None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, cap: float, reduction: str) -> torch.Tensor:
    """Cross-entropy of raw [B, T, V] logits, soft-capped first when cap > 0, against [B, T] targets
    (-1 = ignore). "mean" averages over the targets that count, as F.cross_entropy does."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"loss_reduction must be mean, sum or none, got {reduction!r}")
    batch, time, vocab = logits.shape
    if torch.compiler.is_compiling():  # inductor fuses the plain formulation itself
        capped = softcap_logits(logits.reshape(-1, vocab), cap)
        losses = F.cross_entropy(capped, targets.reshape(-1), ignore_index=-1, reduction="none")
    else:
        losses = _SoftcapCrossEntropy.apply(logits.reshape(-1, vocab), targets.reshape(-1), cap)
    if reduction == "none":
        return losses.view(batch, time)
    total = losses.sum()
    return total if reduction == "sum" else total / (targets >= 0).sum()


# ---------------------------------------------------------------------------------------------
# rotary embeddings and attention masks


def rotary_tables(length: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin, each [length, head_dim], float32, laid out for apply_rotary."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([sin, -sin], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + D/2]) of x [B, T, H, D] by the angles of cos/sin [T, D]:
    (x1, x2) -> (x1 cos + x2 sin, x2 cos - x1 sin), written as x * cos + (x2, x1) * (sin, -sin)
    so it takes four passes over x instead of seven."""
    half = x.size(-1) // 2
    swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    cos = cos[None, :, None, :].to(x.dtype)
    sin = sin[None, :, None, :].to(x.dtype)
    return torch.addcmul(x * cos, swapped, sin)


def band_mask(queries: int, keys: int, offset: int, window: int | None, device: torch.device) -> torch.Tensor:
    """Boolean [queries, keys] mask, True = may attend. Query q sits at absolute position offset + q,
    key k at position k; a query sees keys at or before it, and with a window only the `window` most
    recent of them (itself included)."""
    query_pos = torch.arange(queries, device=device)[:, None] + offset
    key_pos = torch.arange(keys, device=device)[None, :]
    allowed = key_pos <= query_pos
    if window is not None:
        allowed &= query_pos - key_pos < window
    return allowed


# Eager training asks for the same mask every step; a compiled graph builds it inside the graph.
_cached_band_mask = functools.lru_cache(maxsize=64)(band_mask)


def sliding_block_mask(length: int, window: int, device: torch.device):
    """flex_attention's BlockMask for causal attention over the `window` most recent positions
    (itself included) of a length-`length` sequence: blocks wholly outside the band are skipped,
    so an S layer costs ~window / length of an L layer's work, where SDPA with a boolean mask
    computes the whole T x T (and falls to the MATH kernel on CUDA, see sdpa_backend)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def in_band(batch, head, query, key):
        return (key <= query) & (query - key < window)

    return create_block_mask(in_band, None, None, length, length, device=device)


_cached_sliding_block_mask = functools.lru_cache(maxsize=16)(sliding_block_mask)  # per (T, window, device)


@functools.cache
def _compiled_flex_attention():
    """flex_attention outside a compiled model (eager training on CUDA): compiled on its own, as
    eager flex_attention is a reference implementation that materializes the scores."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def uses_flex(kernel: str, device: torch.device) -> bool:
    """[model] attention: "flex" always, "auto" on CUDA (fused band kernel); "sdpa" never."""
    return kernel == "flex" or (kernel == "auto" and device.type == "cuda")


def _flex_band_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    length, gqa = q.size(2), q.size(1) != k.size(1)
    if torch.compiler.is_compiling():  # built inside the graph, as band_mask is
        mask = sliding_block_mask(length, window, q.device)
        return flex_attention(q, k, v, block_mask=mask, enable_gqa=gqa)
    mask = _cached_sliding_block_mask(length, window, q.device)
    run = _compiled_flex_attention() if q.is_cuda else flex_attention
    return run(q, k, v, block_mask=mask, enable_gqa=gqa)


def sdpa_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                 is_causal: bool) -> str:
    """The kernel F.scaled_dot_product_attention picks for these inputs on their device: FLASH,
    EFFICIENT, CUDNN or MATH (MATH keeps float32 [B, H, Tq, Tk] probabilities: slow and big)."""
    from torch.nn.attention import SDPBackend

    choice = torch._fused_sdp_choice(q, k, v, mask, 0.0, is_causal, scale=None,
                                     enable_gqa=q.size(1) != k.size(1))
    return SDPBackend(choice).name


def training_attention_kernels(model: GPT, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Which kernel each kind of layer's training call gets on `device` (one probe per distinct
    window, batch 1 at seq_len, in `dtype`): [{"window", "layers", "kernel"}], kernel being "flex"
    or the SDPA backend's name. Logged at start-up on CUDA, where MATH means the slow, memory-hungry
    path (see sdpa_backend)."""
    cfg = model.config
    found: dict[int | None, dict] = {}
    for layer, window in enumerate(model.windows):
        if window is not None and window >= cfg.seq_len:
            window = None  # sees the whole prefix: the plain causal call
        if window in found:
            found[window]["layers"].append(layer)
            continue
        q = torch.zeros(1, cfg.heads, cfg.seq_len, model.head_dim, device=device, dtype=dtype)
        k = torch.zeros(1, cfg.kv_heads, cfg.seq_len, model.head_dim, device=device, dtype=dtype)
        if window is None:
            kernel = sdpa_backend(q, k, k, None, is_causal=True)
        elif uses_flex(cfg.attention, device):
            kernel = "flex"
        else:
            kernel = sdpa_backend(q, k, k, band_mask(cfg.seq_len, cfg.seq_len, 0, window, device), is_causal=False)
        found[window] = {"window": window, "layers": [layer], "kernel": kernel}
    return list(found.values())


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
           kernel: str = "sdpa") -> torch.Tensor:
    """Causal (optionally windowed) attention of q [B, H, Tq, D] over k, v [B, KV, Tk, D], where the
    queries are the last Tq of the Tk positions (Tq < Tk when decoding with a KV cache). A windowed
    layer over a whole sequence goes through flex_attention when uses_flex(kernel) says so."""
    queries, keys = q.size(2), k.size(2)
    gqa = q.size(1) != k.size(1)
    if window is not None and window < keys and queries == keys and uses_flex(kernel, q.device):
        return _flex_band_attention(q, k, v, window)
    if window is not None and window < keys:
        # Keys no query can see are dropped before SDPA, not just masked.
        first = max(0, keys - queries - window + 1)
        k, v, keys = k[:, :, first:], v[:, :, first:], keys - first
    else:
        window = None
    offset = keys - queries
    if window is None and offset == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if queries == 1:  # one new token sees every key left (the slice above already is the window)
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    make_mask = band_mask if torch.compiler.is_compiling() else _cached_band_mask
    mask = make_mask(queries, keys, offset, window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


# ---------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated
    [layers, B, kv_heads, max_len, head_dim]. Keys are stored after rotary and QK norm."""

    def __init__(self, layers: int, batch_size: int, kv_heads: int, max_len: int, head_dim: int,
                 device=None, dtype=torch.float32):
        shape = (layers, batch_size, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    @property
    def max_len(self) -> int:
        return self.k.size(3)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, KV, T, D] at pos..pos+T; return views of everything cached up to pos+T."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens > max_len {self.max_len}")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one position of every layer, k, v [layers, B, KV, D] (GPT.decode_step's new keys
        and values), at pos, and advance past it."""
        if self.pos >= self.max_len:
            raise ValueError(f"KV cache full: {self.pos + 1} tokens > max_len {self.max_len}")
        self.k[:, :, :, self.pos] = k
        self.v[:, :, :, self.pos] = v
        self.pos += 1

    def reset(self) -> None:
        self.pos = 0

    def expand(self, batch_size: int) -> KVCache:
        """A new cache with a batch-1 cache's contents copied to `batch_size` rows (shared prefill)."""
        if self.batch_size != 1:
            raise ValueError(f"expand needs a batch-1 cache, this one has {self.batch_size} rows")
        new = KVCache.__new__(KVCache)
        new.k = self.k.expand(-1, batch_size, -1, -1, -1).clone()
        new.v = self.v.expand(-1, batch_size, -1, -1, -1).clone()
        new.pos = self.pos
        return new


# ---------------------------------------------------------------------------------------------
# the static-shape decode step (GPT.decode_step)


def _attend_one(q, k, v, k_cache, v_cache, visible):
    """One query per row q [B, H, D] over the cached keys/values [B, KV, max_len, D] where
    `visible` ([max_len], or [B, 1, 1, max_len] for rows at different positions), plus its own
    new k, v [B, KV, D]; float32 softmax. Returns [B, H, D]."""
    batch, heads, dim = q.shape
    kv_heads = k.size(1)
    q = q.float().view(batch, kv_heads, heads // kv_heads, dim) * dim**-0.5  # query groups per kv head
    compiling = torch.compiler.is_compiling()
    # multiply-and-sum under torch.compile, where it fuses into the softmax's kernels; eager, the
    # same sums as matmuls (multiply-and-sum would materialize [B, H, max_len, D] per layer)
    if compiling:
        cached = (q[:, :, :, None, :] * k_cache.float()[:, :, None]).sum(-1)
    else:
        cached = torch.matmul(q, k_cache.float().transpose(-1, -2))
    cached = cached.masked_fill(~visible, float("-inf"))
    own = (q * k.float()[:, :, None, :]).sum(-1, keepdim=True)
    weights = torch.softmax(torch.cat([cached, own], dim=-1), dim=-1)
    if compiling:
        y = (weights[..., :-1, None] * v_cache.float()[:, :, None]).sum(-2)
    else:
        y = torch.matmul(weights[..., :-1], v_cache.float())
    y = y + weights[..., -1:] * v.float()[:, :, None, :]
    return y.view(batch, heads, dim).to(v.dtype)


def _decode_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x), except for one float row on the CPU under torch.compile: written as a
    multiply-and-sum, which inductor turns into one fused reduction that streams the weight at
    ~25-27 GB/s (fp32) where MKL's batch-1 matmul gets 11-22 GB/s (bench/generate.py; measured on
    this VM's 2-core EPYC). Anywhere else, and for int8 layers, the layer's own kernel."""
    if (torch.compiler.is_compiling() and isinstance(layer, nn.Linear) and x.device.type == "cpu"
            and x.numel() == x.size(-1)):
        return (x.unsqueeze(-2).float() * layer.weight.float()).sum(-1).to(x.dtype)
    return layer(x)


# ---------------------------------------------------------------------------------------------
# the GPT


class Attention(nn.Module):
    def __init__(self, cfg: ModelSection, layer: int, window: int | None):
        super().__init__()
        self.layer = layer
        self.window = window  # None: the whole causal prefix
        self.kernel = cfg.attention  # [model] attention: which kernel a windowed layer uses
        self.heads, self.kv_heads = cfg.heads, cfg.kv_heads
        self.head_dim = cfg.width // cfg.heads
        self.c_q = nn.Linear(cfg.width, self.heads * self.head_dim, bias=False)
        self.c_k = nn.Linear(cfg.width, self.kv_heads * self.head_dim, bias=False)
        self.c_v = nn.Linear(cfg.width, self.kv_heads * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.heads * self.head_dim, cfg.width, bias=False)

    def forward(self, x, cos, sin, kv_cache: KVCache | None):
        batch, time, _ = x.shape
        heads, kv_heads = self.heads, self.kv_heads
        if self.training:
            # One matmul for q, k and v. The weights stay three parameters, so Muon orthogonalizes
            # each on its own; concatenating them costs a copy of the weights, not of activations.
            weight = torch.cat([self.c_q.weight, self.c_k.weight, self.c_v.weight])
            qkv = F.linear(x, weight)
        else:
            # Inference calls the layers themselves: a decode step would otherwise copy the q/k/v
            # weights every token, and INT8 models replace the layers with Int8Linear.
            qkv = torch.cat([self.c_q(x), self.c_k(x), self.c_v(x)], dim=-1)
        qkv = qkv.view(batch, time, heads + 2 * kv_heads, self.head_dim)
        # split, not slicing: its backward concatenates, where a slice's zero-fills the whole qkv.
        qk, v = qkv.split([heads + kv_heads, kv_heads], dim=2)
        qk = norm(apply_rotary(qk, cos, sin))  # q and k in one go
        q, k = (t.transpose(1, 2) for t in qk.split([heads, kv_heads], dim=2))
        v = v.transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)
        y = attend(q, k, v, self.window, self.kernel)
        return self.c_proj(y.transpose(1, 2).reshape(batch, time, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelSection):
        super().__init__()
        self.c_fc = nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width, bias=False)
        self.c_proj = nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width, bias=False)

    def forward(self, x):
        return self.c_proj(relu_squared(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelSection, layer: int, window: int | None):
        super().__init__()
        self.attn = Attention(cfg, layer, window)
        self.mlp = FeedForward(cfg)
        self.dropout = cfg.dropout

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        """Residual dropout ([model] dropout), in training only. At 0 it draws no random numbers,
        so runs without it keep their exact RNG stream (and bit-exact resumes)."""
        return F.dropout(y, self.dropout, training=True) if self.dropout and self.training else y

    def forward(self, x, cos, sin, kv_cache):
        x = x + self._drop(self.attn(norm(x), cos, sin, kv_cache))
        return x + self._drop(self.mlp(norm(x)))


def layer_windows(cfg: ModelSection) -> list[int | None]:
    """Each layer's window from the pattern (tiled; last layer always full): an int or None (full)."""
    pattern = cfg.window_pattern.upper() or "L"
    letters = [pattern[i % len(pattern)] for i in range(cfg.depth)]
    letters[-1] = "L"
    return [cfg.short_window if letter == "S" else None for letter in letters]


@torch.no_grad()
def init_(param: torch.Tensor, fill, **kwargs) -> None:
    """fill(tensor, **kwargs) (an nn.init function) on a parameter, also when FSDP has sharded it
    into a DTensor: the whole tensor is drawn on every rank (same seed, same draws) and each keeps
    its shard, so a sharded model starts from exactly the weights one process would draw."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor):
        fill(param, **kwargs)
        return
    full = torch.empty(param.shape, dtype=param.dtype, device=param.to_local().device)
    fill(full, **kwargs)
    param.copy_(distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None))


class LanguageModel(nn.Module):
    """What every model kind shares: parameter counting, and no KV cache unless it says so."""

    supports_kv_cache = False

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def make_kv_cache(self, *args, **kwargs) -> KVCache:
        raise RuntimeError(f"{type(self).__name__} has no KV cache (supports_kv_cache is False)")


class GPT(LanguageModel):
    supports_kv_cache = True

    def __init__(self, cfg: ModelSection, vocab_size: int):
        super().__init__()
        self.config = cfg
        self.vocab_size = vocab_size
        self.max_context = cfg.seq_len
        self.head_dim = cfg.width // cfg.heads
        self.windows = layer_windows(cfg)
        self.wte = nn.Embedding(vocab_size, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg, i, window) for i, window in enumerate(self.windows))
        self.lm_head = nn.Linear(cfg.width, vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(cfg.depth))
        self.x0_lambdas = nn.Parameter(torch.full((cfg.depth,), 0.1))
        cos, sin = rotary_tables(cfg.seq_len, self.head_dim, cfg.rope_base)
        # Not persistent: derived from the config, so checkpoints hold only learned weights.
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fresh weights, and the rotary tables rebuilt: a model made on the meta device (build_model,
        FSDP) has garbage in every tensor until this runs."""
        init_(self.wte.weight, nn.init.normal_, std=1.0)
        init_(self.lm_head.weight, nn.init.normal_, std=0.001)
        bound = 3**0.5 * self.config.width**-0.5  # uniform with std 1/sqrt(width)
        for block in self.blocks:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                init_(linear.weight, nn.init.uniform_, a=-bound, b=bound)
            init_(block.attn.c_proj.weight, nn.init.zeros_)
            init_(block.mlp.c_proj.weight, nn.init.zeros_)
        init_(self.resid_lambdas, nn.init.constant_, val=1.0)
        init_(self.x0_lambdas, nn.init.constant_, val=0.1)
        cos, sin = rotary_tables(self.rotary_cos.size(0), self.head_dim, self.config.rope_base,
                                 self.rotary_cos.device)
        self.rotary_cos.copy_(cos)
        self.rotary_sin.copy_(sin)

    def set_attention(self, kernel: str) -> None:
        """Switch [model] attention (a runtime choice: the weights do not depend on it)."""
        self.config = dataclasses.replace(self.config, attention=kernel)
        for block in self.blocks:
            block.attn.kernel = kernel

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "matrix": [p for block in self.blocks for p in block.parameters()],
            "embedding": [self.wte.weight],
            "unembedding": [self.lm_head.weight],
            "resid_scalar": [self.resid_lambdas],
            "x0_scalar": [self.x0_lambdas],
        }

    def _ensure_rotary(self, length: int) -> None:
        if length > self.rotary_cos.size(0):
            size = max(length, 2 * self.rotary_cos.size(0))
            cos, sin = rotary_tables(size, self.head_dim, self.config.rope_base, self.rotary_cos.device)
            self.rotary_cos, self.rotary_sin = cos, sin

    def make_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        weight = self.lm_head.weight
        self._ensure_rotary(max_len)
        return KVCache(self.config.depth, batch_size, self.config.kv_heads, max_len, self.head_dim,
                       device=device or weight.device, dtype=dtype or weight.dtype)

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None, loss_reduction: str = "mean"):
        time = idx.size(1)
        start = kv_cache.pos if kv_cache is not None else 0
        self._ensure_rotary(start + time)
        cos, sin = self.rotary_cos[start:start + time], self.rotary_sin[start:start + time]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            x = block(x, cos, sin, kv_cache)
        logits = self.lm_head(norm(x))
        if kv_cache is not None:
            kv_cache.advance(time)
        if targets is None:
            return softcap_logits(logits, self.config.logit_softcap)
        return cross_entropy(logits, targets, self.config.logit_softcap, loss_reduction)

    def decode_step(self, idx: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decode step with shapes that never change, for torch.compile (engine --compile).

        idx [B, 1] sits at position `pos`: a 0-dim long tensor (so a new position is not a new
        graph), or one position per row [B] (rows of different lengths decoding together, as a
        server batches requests); k_cache/v_cache [layers, B, kv_heads, max_len, head_dim] hold
        each row's positions < its pos (later slots are masked, whatever they hold).
        Returns (logits [B, V] float32, new_k, new_v [layers, B, kv_heads, head_dim]): the caller
        writes the new keys and values at pos. The caches are only read, so the compiled graph
        mutates none of its inputs (a mutated input costs a copy of the whole cache per step).

        The same numbers as forward(idx, kv_cache=...): each layer attends over every cached slot
        with a mask (key < pos, and inside its window) plus the new key, so the shapes depend on
        max_len alone."""
        batch = idx.size(0)
        pos = pos.view(-1)  # [1] or [B]
        # the rows go through rotary as the time axis [1, B, ...]: each row turns by its own angle
        cos = self.rotary_cos.index_select(0, pos)
        sin = self.rotary_sin.index_select(0, pos)
        key_pos = torch.arange(k_cache.size(3), device=idx.device)
        row_pos = pos.view(-1, 1, 1, 1)  # against key_pos: [1 or B, 1, 1, max_len] masks
        x = x0 = norm(self.wte(idx))
        new_keys, new_values = [], []
        for i, block in enumerate(self.blocks):
            attn = block.attn
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            h = norm(x)
            q = _decode_linear(attn.c_q, h).view(1, batch, attn.heads, attn.head_dim)
            k = _decode_linear(attn.c_k, h).view(1, batch, attn.kv_heads, attn.head_dim)
            v = _decode_linear(attn.c_v, h).view(batch, attn.kv_heads, attn.head_dim)
            q, k = norm(apply_rotary(q, cos, sin))[0], norm(apply_rotary(k, cos, sin))[0]
            new_keys.append(k)
            new_values.append(v)
            visible = key_pos < row_pos
            if attn.window is not None:
                visible &= row_pos - key_pos < attn.window
            y = _attend_one(q, k, v, k_cache[i], v_cache[i], visible)
            x = x + _decode_linear(attn.c_proj, y.reshape(batch, 1, -1))
            mlp = block.mlp
            x = x + _decode_linear(mlp.c_proj, relu_squared(_decode_linear(mlp.c_fc, norm(x))))
        logits = softcap_logits(_decode_linear(self.lm_head, norm(x)), self.config.logit_softcap)
        return logits[:, 0], torch.stack(new_keys), torch.stack(new_values)

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per weight of every matmul (all but the embedding and the
        scalars), plus attention's 12 * heads * head_dim per key seen (QK^T and AV, forward and
        backward), counting min(window, seq_len) keys per layer as nanochat does.

        These are model FLOPs, the work the architecture needs, whatever kernel does it: a windowed
        layer on the "sdpa" path (a boolean band mask) computes all seq_len keys per query, and on
        CUDA falls to the MATH kernel, so its wasted work shows as a low MFU, never as a high one.
        training_attention_kernels() says which kernel each layer gets (logged at start-up)."""
        matmul_params = self.num_params() - self.wte.weight.numel() - 2 * self.config.depth
        seq_len = self.config.seq_len
        keys = sum(min(window or seq_len, seq_len) for window in self.windows)
        return float(6 * matmul_params + 12 * self.config.heads * self.head_dim * keys)


# ---------------------------------------------------------------------------------------------
# baselines: same interface, no KV cache (the engine re-feeds the last max_context tokens)


class Bigram(LanguageModel):
    """Next token from the current token alone: one [V, V] table of logits."""

    def __init__(self, cfg: ModelSection, vocab_size: int):
        super().__init__()
        self.config = cfg
        self.vocab_size = vocab_size
        self.max_context = 1
        self.table = nn.Embedding(vocab_size, vocab_size)

    @torch.no_grad()
    def init_weights(self) -> None:
        init_(self.table.weight, nn.init.normal_, std=0.01)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"embedding": [self.table.weight]}

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction: str = "mean"):
        logits = self.table(idx)
        return logits.float() if targets is None else cross_entropy(logits, targets, 0.0, loss_reduction)

    def flops_per_token(self) -> float:
        return 0.0  # a table lookup: no matmul at all


class MLP(LanguageModel):
    """Bengio et al. (2003): the embeddings of the last `context` tokens, concatenated, through one
    ReLU^2 hidden layer (mlp_ratio * width) to the logits. Positions before the start see zeros."""

    def __init__(self, cfg: ModelSection, vocab_size: int):
        super().__init__()
        self.config = cfg
        self.vocab_size = vocab_size
        self.max_context = cfg.context
        self.embed_dim = max(16, cfg.width // 2)
        self.wte = nn.Embedding(vocab_size, self.embed_dim)
        self.hidden = nn.Linear(cfg.context * self.embed_dim, cfg.mlp_ratio * cfg.width, bias=False)
        self.lm_head = nn.Linear(cfg.mlp_ratio * cfg.width, vocab_size, bias=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        init_(self.wte.weight, nn.init.normal_, std=1.0)
        fan_in = self.hidden.weight.size(1)
        init_(self.hidden.weight, nn.init.uniform_, a=-(3 / fan_in) ** 0.5, b=(3 / fan_in) ** 0.5)
        init_(self.lm_head.weight, nn.init.normal_, std=0.001)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"matrix": [self.hidden.weight], "embedding": [self.wte.weight],
                "unembedding": [self.lm_head.weight]}

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction: str = "mean"):
        batch, time = idx.shape
        x = norm(self.wte(idx))
        x = F.pad(x, (0, 0, self.max_context - 1, 0))  # zeros before the first token
        x = x.unfold(1, self.max_context, 1)  # [B, T, E, context]
        x = x.transpose(2, 3).reshape(batch, time, -1)
        logits = self.lm_head(relu_squared(self.hidden(x)))
        return logits.float() if targets is None else cross_entropy(logits, targets, 0.0, loss_reduction)

    def flops_per_token(self) -> float:
        return float(6 * (self.hidden.weight.numel() + self.lm_head.weight.numel()))


MODELS: dict[str, type[LanguageModel]] = {"gpt": GPT, "bigram": Bigram, "mlp": MLP}


def build_model(model_cfg: ModelSection, vocab_size: int, device: torch.device | str | None = None,
                initialize: bool = True) -> LanguageModel:
    """A freshly initialised model of [model] kind on `device` (None: the default device, the CPU
    unless a `with torch.device(...)` says otherwise), derived sizes resolved. The modules are made
    on the meta device and init_weights draws every weight once, so the random numbers a model
    starts from depend on the seed and init_weights alone (an FSDP run, which shards the meta
    model before drawing, starts from the same weights). initialize=False: on the meta device,
    for the caller to shard, move (to_empty) and init_weights itself."""
    cfg = model_cfg.resolved()
    if cfg.kind not in MODELS:
        raise BadInput(f"[model] kind: unknown model {cfg.kind!r}; choose one of {', '.join(MODELS)}")
    if vocab_size < 1:
        raise BadInput(f"vocab size must be positive, got {vocab_size}")
    if cfg.kind == "gpt":
        if cfg.width % cfg.heads or (cfg.width // cfg.heads) % 2 or cfg.heads % cfg.kv_heads:
            raise BadInput(f"[model] width {cfg.width}, heads {cfg.heads}, kv_heads {cfg.kv_heads}: width must "
                           f"split into heads of even size and heads into kv_heads groups")
    with torch.device("meta"):
        model = MODELS[cfg.kind](cfg, vocab_size)
    if not initialize:
        return model
    target = torch.device(device) if device is not None else torch.get_default_device()
    if target.type != "meta":
        model.to_empty(device=target)
        model.init_weights()
    return model

