"""The model: real tiny models on CPU, checked for behaviour (loss at init, learning, KV cache,
sliding windows, grouped-query shapes, the baselines and the bf16 path)."""

import math

import pytest
import torch

import workbench.model as model_module
from workbench.config import ModelSection, TrainSection
from workbench.errors import BadInput
from workbench.model import MODELS, band_mask, build_model, cross_entropy
from workbench.optim import build_optimizer

VOCAB = 512


def small_gpt(**overrides) -> torch.nn.Module:
    settings = dict(depth=2, width=64, heads=4, kv_heads=2, seq_len=32, window_pattern="SL", short_window=8)
    settings.update(overrides)
    return build_model(ModelSection(**settings), VOCAB)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero everywhere: a fresh model's zero output projections would hide attention bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3 + (1.0 if p.ndim == 1 else 0.0))
    return model


@pytest.mark.parametrize("kind", list(MODELS))
def test_loss_at_init_is_close_to_ln_vocab(kind):
    torch.manual_seed(0)
    model = build_model(ModelSection(kind=kind, depth=2, seq_len=64), VOCAB)
    idx = torch.randint(0, VOCAB, (4, 65))
    loss = model(idx[:, :-1], idx[:, 1:])
    assert abs(loss.item() - math.log(VOCAB)) < 0.3


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = build_model(ModelSection(depth=1, width=64, seq_len=32), 256)
    optimizer = build_optimizer(model, TrainSection())
    batch = torch.randint(0, 256, (4, 33))
    for _ in range(60):
        loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.5


def test_forward_shapes_dtypes_and_loss_reductions():
    model = small_gpt()
    idx = torch.randint(0, VOCAB, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, VOCAB) and logits.dtype == torch.float32
    targets = idx.clone()
    targets[:, :4] = -1  # ignored positions
    per_token = model(idx, targets, loss_reduction="none")
    assert per_token.shape == (3, 16)
    assert torch.all(per_token[:, :4] == 0)
    mean = model(idx, targets)
    total = model(idx, targets, loss_reduction="sum")
    assert torch.allclose(mean * 36, total, rtol=1e-5)
    assert torch.allclose(per_token.sum(), total, rtol=1e-5)


@pytest.mark.parametrize("cap", [0.0, 15.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("rows_per_chunk", [5, None])
def test_fused_softcap_cross_entropy_matches_autograd(cap, reduction, rows_per_chunk, monkeypatch):
    if rows_per_chunk:  # 12 rows in chunks of 5: the chunk edges must not show
        monkeypatch.setattr(model_module, "CE_CHUNK_BYTES", 4 * 40 * rows_per_chunk)
    torch.manual_seed(0)
    logits = (torch.randn(2, 6, 40, dtype=torch.float64) * 20).requires_grad_()
    targets = torch.randint(0, 40, (2, 6))
    targets[0, :2] = -1
    weights = torch.rand(2, 6, dtype=torch.float64)  # a non-uniform upstream gradient for "none"
    capped = cap * torch.tanh(logits / cap) if cap else logits
    expected = torch.nn.functional.cross_entropy(capped.reshape(-1, 40), targets.reshape(-1), ignore_index=-1,
                                                 reduction=reduction)
    got = cross_entropy(logits.float(), targets, cap, reduction)
    torch.testing.assert_close(got.double(), expected.view_as(got), rtol=1e-5, atol=1e-5)
    expected_grad, = torch.autograd.grad((expected.view_as(got) * (weights if reduction == "none" else 1)).sum(),
                                         logits)
    leaf = logits.detach().float().requires_grad_()
    got_grad, = torch.autograd.grad((cross_entropy(leaf, targets, cap, reduction) *
                                     (weights.float() if reduction == "none" else 1)).sum(), leaf)
    torch.testing.assert_close(got_grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


def test_fused_cross_entropy_takes_bf16_logits(monkeypatch):
    monkeypatch.setattr(model_module, "CE_CHUNK_BYTES", 4 * 64 * 7)  # several chunks of 7 rows
    torch.manual_seed(0)
    logits = (torch.randn(2, 10, 64) * 10).bfloat16().requires_grad_()
    targets = torch.randint(0, 64, (2, 10))
    loss = cross_entropy(logits, targets, 15.0, "mean")
    loss.backward()
    reference = logits.detach().float().requires_grad_()
    expected = torch.nn.functional.cross_entropy((15 * torch.tanh(reference / 15)).view(-1, 64), targets.view(-1))
    expected.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.grad.float(), reference.grad, rtol=1e-2, atol=1e-4)


def test_logit_softcap_bounds_logits():
    model = randomize(small_gpt(logit_softcap=5.0))
    with torch.no_grad():
        model.lm_head.weight.mul_(100)
    logits = model(torch.randint(0, VOCAB, (2, 8)))
    assert logits.abs().max() <= 5.0
    uncapped = randomize(small_gpt(logit_softcap=0.0))
    with torch.no_grad():
        uncapped.lm_head.weight.mul_(100)
    assert uncapped(torch.randint(0, VOCAB, (2, 8))).abs().max() > 5.0


@pytest.mark.parametrize("chunks", [[32], [1] * 32, [5, 11, 1, 1, 14], [20, 12]])
def test_kv_cached_decode_equals_full_forward(chunks):
    model = randomize(small_gpt()).eval()
    idx = torch.randint(0, VOCAB, (2, 32))
    with torch.no_grad():
        full = model(idx)
        cache = model.make_kv_cache(batch_size=2, max_len=40)
        pieces, start = [], 0
        for size in chunks:
            pieces.append(model(idx[:, start:start + size], kv_cache=cache))
            start += size
    assert cache.pos == 32
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)


def test_kv_cache_expand_shares_a_prefill():
    model = randomize(small_gpt()).eval()
    prompt = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        cache = model.make_kv_cache(batch_size=1, max_len=20)
        model(prompt, kv_cache=cache)
        wide = cache.expand(3)
        next_tokens = torch.randint(0, VOCAB, (3, 1))
        stepped = model(next_tokens, kv_cache=wide)
        for row in range(3):
            full = model(torch.cat([prompt, next_tokens[row:row + 1]], dim=1))
            torch.testing.assert_close(stepped[row, -1], full[0, -1], rtol=1e-4, atol=1e-4)
    assert cache.pos == 12 and wide.pos == 13
    wide.reset()
    assert wide.pos == 0


@pytest.mark.parametrize("batch", [1, 3])
def test_static_decode_step_equals_cached_forward(batch):
    """GPT.decode_step (the shape-static step torch.compile gets) gives forward's logits, past the
    short window, and its new keys/values appended make the same cache as forward's."""
    model = randomize(small_gpt()).eval()
    idx = torch.randint(0, VOCAB, (batch, 30))
    with torch.no_grad():
        reference = model.make_kv_cache(batch_size=batch, max_len=32)
        expected = model(idx, kv_cache=reference)
        cache = model.make_kv_cache(batch_size=batch, max_len=32)
        model(idx[:, :10], kv_cache=cache)
        for t in range(10, 30):
            logits, keys, values = model.decode_step(idx[:, t:t + 1], cache.k, cache.v, torch.tensor(t))
            cache.append(keys, values)
            torch.testing.assert_close(logits, expected[:, t], rtol=1e-4, atol=1e-4)
    assert cache.pos == 30
    torch.testing.assert_close(cache.k, reference.k, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.v, reference.v, rtol=1e-5, atol=1e-5)


def test_kv_cache_append_past_the_end_is_an_error():
    model = small_gpt()
    cache = model.make_kv_cache(batch_size=1, max_len=2)
    keys = torch.zeros(cache.k.shape[:3] + cache.k.shape[4:])
    cache.append(keys, keys)
    cache.append(keys, keys)
    with pytest.raises(ValueError, match="KV cache full"):
        cache.append(keys, keys)


def test_kv_cache_overflow_is_an_error():
    model = small_gpt()
    cache = model.make_kv_cache(batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="KV cache full"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)


def test_decoding_past_seq_len_keeps_matching():
    """Rotary tables grow on demand, so a KV cache longer than seq_len decodes consistently."""
    model = randomize(small_gpt(seq_len=16, short_window=4)).eval()
    idx = torch.randint(0, VOCAB, (1, 24))
    with torch.no_grad():
        full = model(idx)
        cache = model.make_kv_cache(batch_size=1, max_len=24)
        pieces = [model(idx[:, :10], kv_cache=cache)] + [model(idx[:, t:t + 1], kv_cache=cache) for t in range(10, 24)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)


def block_outputs(model, idx):
    outputs = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for block in model.blocks]
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    return outputs


def test_sliding_window_really_limits_attention():
    window = 4
    model = randomize(small_gpt(short_window=window)).eval()
    assert model.windows == [window, None]
    idx = torch.randint(0, VOCAB, (1, 16))
    changed = idx.clone()
    changed[0, 0] = (idx[0, 0] + 1) % VOCAB
    short_before, full_before = block_outputs(model, idx)
    short_after, full_after = block_outputs(model, changed)
    # Position t of the windowed layer sees tokens t-3..t: token 0 reaches positions 0..3 only.
    assert not torch.allclose(short_before[0, window - 1], short_after[0, window - 1])
    torch.testing.assert_close(short_before[0, window:], short_after[0, window:], rtol=0, atol=0)
    # The full layer after it sees everything.
    assert not torch.allclose(full_before[0, -1], full_after[0, -1])


def test_window_pattern_tiles_and_last_layer_is_full():
    model = build_model(ModelSection(depth=6, seq_len=64, window_pattern="SSL"), VOCAB)
    assert model.windows == [32, 32, None, 32, 32, None]
    model = build_model(ModelSection(depth=3, seq_len=64, window_pattern="S"), VOCAB)
    assert model.windows == [32, 32, None]


def test_band_mask():
    mask = band_mask(3, 6, 3, 2, torch.device("cpu"))
    expected = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_grouped_query_attention_shapes(kv_heads):
    model = small_gpt(kv_heads=kv_heads)
    head_dim = 64 // 4
    attention = model.blocks[0].attn
    assert attention.c_q.weight.shape == (4 * head_dim, 64)
    assert attention.c_k.weight.shape == (kv_heads * head_dim, 64)
    assert attention.c_v.weight.shape == (kv_heads * head_dim, 64)
    cache = model.make_kv_cache(batch_size=3, max_len=10)
    assert cache.k.shape == (2, 3, kv_heads, 10, head_dim)
    assert model(torch.zeros(3, 10, dtype=torch.long), kv_cache=cache).shape == (3, 10, VOCAB)


def test_derived_sizes_follow_depth():
    model = build_model(ModelSection(depth=4, seq_len=256), 32768)
    assert (model.config.width, model.config.heads, model.config.kv_heads) == (256, 4, 2)
    assert model.config.short_window == 128
    embedding_and_head = 2 * 32768 * 256
    per_block = 256 * 256 + 2 * 128 * 256 + 256 * 256 + 2 * 256 * 1024
    assert model.num_params() == embedding_and_head + 4 * per_block + 2 * 4  # ~19.7M


def test_flops_per_token_counts_matmuls_and_windowed_attention():
    model = small_gpt(depth=2, width=64, seq_len=32, short_window=8)
    width, ffn = 64, 256
    per_block = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 2 * width * ffn  # q, k+v (2 kv heads), proj, mlp
    matmuls = 2 * per_block + VOCAB * width
    attention = 12 * 4 * 16 * (8 + 32)  # layer 0 sees 8 keys, layer 1 all 32
    assert model.flops_per_token() == 6 * matmuls + attention


def test_checkpoint_state_has_only_learned_weights():
    state = small_gpt().state_dict()
    assert not any("rotary" in name for name in state)
    assert "resid_lambdas" in state and "x0_lambdas" in state


def test_fresh_blocks_start_as_identity():
    model = small_gpt()
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.c_proj.weight) == 0
        assert torch.count_nonzero(block.mlp.c_proj.weight) == 0


def test_bad_model_settings_raise_bad_input():
    with pytest.raises(BadInput):
        build_model(ModelSection(kind="transformer-xl"), VOCAB)
    with pytest.raises(BadInput):
        build_model(ModelSection(depth=1, width=64, heads=3), VOCAB)


@pytest.mark.parametrize("kind", ["bigram", "mlp"])
def test_baselines_train_a_step_and_generate(kind):
    torch.manual_seed(0)
    model = build_model(ModelSection(kind=kind, depth=1, context=4), VOCAB)
    assert model.supports_kv_cache is False
    with pytest.raises(RuntimeError):
        model.make_kv_cache(1, 8)
    optimizer = build_optimizer(model, TrainSection())
    batch = torch.randint(0, VOCAB, (4, 17))
    before = model(batch[:, :-1], batch[:, 1:])
    before.backward()
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        assert model(batch[:, :-1], batch[:, 1:]) < before
        # Generate as the engine does: re-feed the last max_context tokens.
        tokens = [1, 2, 3]
        for _ in range(10):
            context = torch.tensor([tokens[-model.max_context:]])
            tokens.append(int(model(context)[0, -1].argmax()))
    assert len(tokens) == 13 and all(0 <= t < VOCAB for t in tokens)


def test_mlp_sees_exactly_its_context():
    model = randomize(build_model(ModelSection(kind="mlp", depth=1, context=3), VOCAB))
    idx = torch.randint(0, VOCAB, (1, 10))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(before[0, :5], after[0, :5], rtol=0, atol=0)  # the past
    assert not torch.allclose(before[0, 7], after[0, 7])  # 5 is within 3 of 7
    torch.testing.assert_close(before[0, 8:], after[0, 8:], rtol=0, atol=0)  # out of reach
    # Re-feeding only the last `context` tokens gives the same next-token logits.
    torch.testing.assert_close(model(idx[:, -3:])[0, -1], before[0, -1], rtol=1e-4, atol=1e-4)


def test_bf16_autocast_loss_matches_fp32():
    torch.manual_seed(0)
    model = build_model(ModelSection(depth=2, seq_len=64), VOCAB)
    optimizer = build_optimizer(model, TrainSection())
    batch = torch.randint(0, VOCAB, (4, 65))
    for _ in range(5):  # move off the init so the check is not trivially ln(vocab)
        model(batch[:, :-1], batch[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        fp32 = model(batch[:, :-1], batch[:, 1:])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(batch[:, :-1], batch[:, 1:])
    assert bf16.dtype == torch.float32
    assert abs(bf16.item() - fp32.item()) < 0.02 * fp32.item()


def test_residual_dropout_only_in_training():
    plain = randomize(small_gpt())
    dropped = randomize(small_gpt(dropout=0.3))
    idx = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
    dropped.eval()
    plain.eval()
    assert torch.equal(dropped(idx), plain(idx))  # eval: exactly the dropout-free model
    assert torch.equal(dropped(idx), dropped(idx))  # and deterministic
    dropped.train()
    plain.train()
    torch.manual_seed(0)
    first = dropped(idx, idx)
    second = dropped(idx, idx)
    assert first.item() != second.item()  # each training forward drops other units
    assert first.item() != plain(idx, idx).item()
