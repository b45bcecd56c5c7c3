"""bench/learn.py's scoring: every byte of the held-out text counted exactly once, for any
tokenizer, so a char model and a BPE model compare on the same text."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from learn import held_out_bpb  # noqa: E402

VOCAB = 7


def uniform(inputs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(*inputs.shape, VOCAB)


def counting_successor(inputs: torch.Tensor) -> torch.Tensor:
    """Certain that token t is followed by t + 1 (mod VOCAB)."""
    return torch.nn.functional.one_hot((inputs + 1) % VOCAB, VOCAB).float() * 100.0


def test_every_token_is_scored_once_over_every_byte():
    ids = [i % VOCAB for i in range(103)]  # windows of 10: ten full ones and a short last one
    sizes = [1, 2, 3, 1, 2, 3, 1]  # bytes per token id
    total_bytes = sum(sizes[i] for i in ids)
    for context in (10, 16, 200):
        bpb = held_out_bpb(uniform, ids, sizes, context, VOCAB, batch_size=3)
        # a uniform model pays log2(VOCAB) bits for every token, the unpredictable first one included
        assert bpb == pytest.approx(len(ids) * math.log2(VOCAB) / total_bytes)
        # a model that knows the sequence pays only for the first token
        assert held_out_bpb(counting_successor, ids, sizes, context, VOCAB) == pytest.approx(
            math.log2(VOCAB) / total_bytes)


def test_zero_byte_tokens_count_in_neither_sum():
    ids = [0, 1, 2, 3, 4]  # token 0 plays <|bos|>: no bytes
    sizes = [0, 1, 1, 1, 1, 1, 1]
    bpb = held_out_bpb(uniform, ids, sizes, 2, VOCAB)
    assert bpb == pytest.approx(4 * math.log2(VOCAB) / 4)
