"""picochat's GPT as a transformers model (trust_remote_code), written by `picochat export`.

The same computation as picochat's workbench/model.py, op for op, so logits match picochat's to
float rounding:
- token embedding -> RMSNorm (no weights) -> blocks -> RMSNorm -> untied head -> soft-cap
  c * tanh(x / c), returned as float32;
- before block i the residual stream is re-mixed with the normed embedding x0:
  x = resid_lambdas[i] * x + x0_lambdas[i] * x0;
- a block: x + attn(norm(x)), then x + mlp(norm(x)), each branch behind residual dropout
  (config.dropout; inactive at inference);
- attention: grouped-query heads, rotary embeddings (the halves layout: pairs (i, i + D/2)) and
  RMSNorm on q and k after rotary; "sliding_attention" layers let a query see itself and the
  sliding_window - 1 tokens before it, "full_attention" layers the whole causal prefix;
- the MLP is relu(x)^2.

The KV cache is transformers' own: DynamicCache(config=...) keeps only the last window of keys
for the sliding layers, and the attention below works from relative positions, so a cache cut
to the window and a full one give the same numbers. Padding masks (2-D attention_mask, e.g.
left-padded batches) and position_ids are honoured; 4-D masks and static caches are not supported.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_picochat import PicochatConfig

RMS_EPS = torch.finfo(torch.float32).eps  # picochat's (F.rms_norm's default for float32)

# transformers 5 renamed past_key_values to cache (in forward and in the outputs); both are accepted.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm without weights over the last dimension, statistics in float32 (picochat's norm)."""
    stats = torch.promote_types(x.dtype, torch.float32)
    rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=stats) / x.size(-1) ** 0.5
    return x * torch.rsqrt(rms.square() + RMS_EPS).to(x.dtype)


def rotary_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin [B, T, head_dim] (float32) for positions [B, T]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device)
                               / head_dim))
    angles = positions.to(torch.float32)[..., None] * inv_freq
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([sin, -sin], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + D/2]) of x [B, T, H, D] by cos/sin [B, T, D]."""
    half = x.size(-1) // 2
    swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    return torch.addcmul(x * cos[:, :, None].to(x.dtype), swapped, sin[:, :, None].to(x.dtype))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
           key_padding: torch.Tensor | None) -> torch.Tensor:
    """Causal (optionally windowed) attention of q [B, H, Tq, D] over k, v [B, KV, Tk, D], the
    queries being the last Tq of Tk consecutive positions. key_padding [B, Tk] (True = a real
    token) or None when nothing is padded."""
    queries, keys = q.size(2), k.size(2)
    gqa = q.size(1) != k.size(1)
    if window is not None and window < keys:
        first = max(0, keys - queries - window + 1)  # keys no query can see are dropped
        k, v, keys = k[:, :, first:], v[:, :, first:], keys - first
        key_padding = None if key_padding is None else key_padding[:, first:]
    else:
        window = None
    offset = keys - queries
    if key_padding is None:  # picochat's own three cases, for the same kernels and numbers
        if window is None and offset == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        if queries == 1:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    query_pos = torch.arange(queries, device=q.device)[:, None] + offset
    key_pos = torch.arange(keys, device=q.device)[None, :]
    allowed = key_pos <= query_pos
    if window is not None:
        allowed = allowed & (query_pos - key_pos < window)
    if key_padding is not None:
        # A padding query still sees itself, so no row is all -inf (its output is never used).
        allowed = allowed[None] & (key_padding[:, None, :] | (key_pos == query_pos)[None])
        allowed = allowed[:, None]  # [B, 1, Tq, Tk]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=gqa)


class PicochatAttention(nn.Module):
    def __init__(self, config: PicochatConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.window = config.layer_windows[layer_idx]
        self.heads, self.kv_heads, self.head_dim = config.heads, config.kv_heads, config.head_dim
        self.c_q = nn.Linear(config.width, self.heads * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.width, self.kv_heads * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.width, self.kv_heads * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.heads * self.head_dim, config.width, bias=False)

    def forward(self, x, cos, sin, cache: Cache | None, key_padding: torch.Tensor | None):
        batch, time, _ = x.shape
        qkv = torch.cat([self.c_q(x), self.c_k(x), self.c_v(x)], dim=-1)
        qkv = qkv.view(batch, time, self.heads + 2 * self.kv_heads, self.head_dim)
        qk, v = qkv.split([self.heads + self.kv_heads, self.kv_heads], dim=2)
        qk = rms_norm(apply_rotary(qk, cos, sin))  # q and k together, like picochat
        q, k = (t.transpose(1, 2) for t in qk.split([self.heads, self.kv_heads], dim=2))
        v = v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
            k, v = k.to(q.dtype), v.to(q.dtype)
        if key_padding is not None:
            key_padding = key_padding[:, -k.size(2):]  # a sliding cache returns only the last keys
        y = attend(q, k, v, self.window, key_padding)
        return self.c_proj(y.transpose(1, 2).reshape(batch, time, -1))


class PicochatMLP(nn.Module):
    def __init__(self, config: PicochatConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.width, config.intermediate_size, bias=False)
        self.c_proj = nn.Linear(config.intermediate_size, config.width, bias=False)

    def forward(self, x):
        return self.c_proj(torch.relu(self.c_fc(x)).square())


class PicochatBlock(nn.Module):
    def __init__(self, config: PicochatConfig, layer_idx: int):
        super().__init__()
        self.attn = PicochatAttention(config, layer_idx)
        self.mlp = PicochatMLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, cache, key_padding):
        x = x + self.dropout(self.attn(rms_norm(x), cos, sin, cache, key_padding))
        return x + self.dropout(self.mlp(rms_norm(x)))


class PicochatPreTrainedModel(PreTrainedModel):
    config_class = PicochatConfig
    base_model_prefix = "model"
    _no_split_modules = ["PicochatBlock"]
    _supports_cache_class = True  # transformers 4.x: the model takes a Cache object

    @torch.no_grad()
    def _init_weights(self, module):
        # picochat's init (only used for a model built from a config, not for loaded weights)
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0)
        elif isinstance(module, nn.Linear):
            bound = 3**0.5 * self.config.width**-0.5
            nn.init.uniform_(module.weight, -bound, bound)
        elif isinstance(module, PicochatModel):
            module.resid_lambdas.fill_(1.0)
            module.x0_lambdas.fill_(0.1)


class PicochatModel(PicochatPreTrainedModel):
    """The embedding, the blocks and the residual scalars: hidden states before the head."""

    def __init__(self, config: PicochatConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.width)
        self.blocks = nn.ModuleList(PicochatBlock(config, i) for i in range(config.depth))
        self.resid_lambdas = nn.Parameter(torch.ones(config.depth))
        self.x0_lambdas = nn.Parameter(torch.full((config.depth,), 0.1))
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, past_key_values=None, **kwargs) -> BaseModelOutputWithPast:
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("picochat: give exactly one of input_ids and inputs_embeds")
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        embeddings = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        batch, time = embeddings.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + time, device=embeddings.device)[None].expand(batch, -1)
        key_padding = None
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError("picochat: attention_mask must be 2-D [batch, past + new tokens]")
            if not bool(attention_mask.all()):
                key_padding = attention_mask.to(torch.bool)
        cos, sin = rotary_tables(position_ids, self.config.head_dim, self.config.rope_base)
        x = x0 = rms_norm(embeddings)
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            x = block(x, cos, sin, cache, key_padding)
        return BaseModelOutputWithPast(last_hidden_state=rms_norm(x), **{_CACHE_FIELD: cache})


class PicochatForCausalLM(PicochatPreTrainedModel, GenerationMixin):
    def __init__(self, config: PicochatConfig):
        super().__init__(config)
        self.model = PicochatModel(config)
        self.lm_head = nn.Linear(config.width, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.wte

    def set_input_embeddings(self, value):
        self.model.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep: int = 0, past_key_values=None,
                **kwargs) -> CausalLMOutputWithPast:
        """labels [B, T] as transformers has them: the inputs themselves (shifted here), -100 = ignore."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache if cache is not None else past_key_values,
                             inputs_embeds=inputs_embeds, use_cache=use_cache)
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden).float()
        cap = self.config.logit_softcap
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                   labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: getattr(outputs, _CACHE_FIELD)})
