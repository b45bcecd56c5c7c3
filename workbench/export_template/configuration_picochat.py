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

    # picochat's [model] fields, resolved, and the vocabulary size, with the defaults of an unset field
    FIELDS = {"vocab_size": 32768, "kind": "gpt", "depth": 4, "width": 256, "heads": 4, "kv_heads": 2,
              "seq_len": 256, "window_pattern": "SSSL", "short_window": 128, "mlp_ratio": 4,
              "logit_softcap": 15.0, "rope_base": 10000.0,
              "context": 8,  # the mlp baseline's field, kept so config.json holds all of [model]
              "dropout": 0.0}

    def __init__(self, use_cache: bool = True, tie_word_embeddings: bool = False, **kwargs):
        for name, default in self.FIELDS.items():
            setattr(self, name, kwargs.pop(name, default))
        if self.kind != "gpt":
            raise ValueError(f"picochat: only the gpt model kind exports, not {self.kind!r}")
        if self.width % self.heads or (self.width // self.heads) % 2 or self.heads % self.kv_heads:
            raise ValueError(f"picochat: width {self.width}, heads {self.heads}, kv_heads {self.kv_heads}: width "
                             "must split into heads of even size and heads into kv_heads groups")
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
