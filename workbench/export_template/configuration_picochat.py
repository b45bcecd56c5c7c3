"""The configuration of a picochat GPT exported for Hugging Face transformers.

Written by `picochat export` next to modeling_picochat.py; loaded with trust_remote_code. The
fields are picochat's own [model] section, resolved (every derived size filled in), plus the
vocabulary size and the special token ids; the usual transformers names (hidden_size,
num_hidden_layers, ...) read the same fields through attribute_map, so nothing is stored twice.
"""

from __future__ import annotations

try:  # transformers >= 5 spells it PreTrainedConfig, 4.x PretrainedConfig
    from transformers import PreTrainedConfig
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import PretrainedConfig as PreTrainedConfig


class PicochatConfig(PreTrainedConfig):
    model_type = "picochat"
    attribute_map = {
        "hidden_size": "width",
        "num_hidden_layers": "depth",
        "num_attention_heads": "heads",
        "num_key_value_heads": "kv_heads",
        "max_position_embeddings": "seq_len",
    }

    def __init__(self, vocab_size: int = 32768, kind: str = "gpt", depth: int = 4, width: int = 256,
                 heads: int = 4, kv_heads: int = 2, seq_len: int = 256, window_pattern: str = "SSSL",
                 short_window: int = 128, mlp_ratio: int = 4, logit_softcap: float = 15.0,
                 rope_base: float = 10000.0, context: int = 8, dropout: float = 0.0,
                 use_cache: bool = True, tie_word_embeddings: bool = False, **kwargs):
        if kind != "gpt":
            raise ValueError(f"picochat: only the gpt model kind exports, not {kind!r}")
        if width % heads or (width // heads) % 2 or heads % kv_heads:
            raise ValueError(f"picochat: width {width}, heads {heads}, kv_heads {kv_heads}: width must split "
                             "into heads of even size and heads into kv_heads groups")
        self.vocab_size = vocab_size
        self.kind = kind
        self.depth = depth
        self.width = width
        self.heads = heads
        self.kv_heads = kv_heads
        self.seq_len = seq_len
        self.window_pattern = window_pattern
        self.short_window = short_window
        self.mlp_ratio = mlp_ratio
        self.logit_softcap = logit_softcap
        self.rope_base = rope_base
        self.context = context  # the mlp baseline's field, kept so config.json holds all of [model]
        self.dropout = dropout
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    # Derived, never stored: picochat's window_pattern is the one truth. DynamicCache(config=...)
    # reads layer_types and sliding_window to keep only a window's worth of keys for "S" layers.

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def intermediate_size(self) -> int:
        return self.mlp_ratio * self.width

    @property
    def layer_windows(self) -> list[int | None]:
        """Each layer's window: the pattern tiled over the layers, the last layer always full (None)."""
        pattern = self.window_pattern.upper() or "L"
        letters = [pattern[i % len(pattern)] for i in range(self.depth)]
        letters[-1] = "L"
        return [self.short_window if letter == "S" else None for letter in letters]

    @property
    def layer_types(self) -> list[str]:
        return ["full_attention" if window is None else "sliding_attention" for window in self.layer_windows]

    @property
    def sliding_window(self) -> int | None:
        return self.short_window if "sliding_attention" in self.layer_types else None
