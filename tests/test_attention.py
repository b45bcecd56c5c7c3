"""[model] attention: flex_attention with a BlockMask for the sliding-window layers gives the SDPA
path's numbers (eager and compiled forward; backward where torch runs it on the CPU), and the
start-up report names the kernel each kind of layer gets."""

import dataclasses

import pytest
import torch

from workbench.config import ModelSection
from workbench.model import (
    _cached_sliding_block_mask,
    attend,
    build_model,
    training_attention_kernels,
    uses_flex,
)

VOCAB = 97


def twin_models(**settings):
    """The same weights twice: one on the SDPA path, one on flex_attention. GQA (4 heads over 2 kv
    heads), a window shorter than the sequence, and a sequence that is not a multiple of flex's
    128-token blocks."""
    cfg = ModelSection(depth=3, width=64, heads=4, kv_heads=2, seq_len=80, window_pattern="SSL",
                       short_window=24, **settings)
    torch.manual_seed(0)
    sdpa = build_model(dataclasses.replace(cfg, attention="sdpa"), VOCAB)
    flex = build_model(dataclasses.replace(cfg, attention="flex"), VOCAB)
    flex.load_state_dict(sdpa.state_dict())
    for model in (sdpa, flex):  # non-zero output projections, so attention reaches the logits
        for block in model.blocks:
            torch.nn.init.normal_(block.attn.c_proj.weight, std=0.05)
            torch.nn.init.normal_(block.mlp.c_proj.weight, std=0.05)
    flex.load_state_dict(sdpa.state_dict())
    return sdpa, flex


def batch(rows=2, length=80):
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    """torch refuses flex_attention with requires_grad on the CPU (a guard: the eager kernel itself
    is the reference implementation and differentiates fine). Lifted for the test only."""
    import torch.nn.attention.flex_attention as flex_module

    monkeypatch.setattr(flex_module, "_validate_device", lambda *args: None)


def test_auto_is_flex_on_cuda_only():
    assert uses_flex("auto", torch.device("cuda", 0)) and not uses_flex("auto", torch.device("cpu"))
    assert uses_flex("flex", torch.device("cpu")) and not uses_flex("sdpa", torch.device("cuda", 0))


def test_flex_forward_equals_sdpa():
    sdpa, flex = twin_models()
    idx = batch()
    with torch.no_grad():
        expected, got = sdpa(idx), flex(idx)
    assert torch.allclose(got, expected, atol=2e-5), (got - expected).abs().max()
    # the mask is built once per (T, window, device) and reused by every S layer and every call
    _cached_sliding_block_mask.cache_clear()
    with torch.no_grad():
        flex(idx)
        flex(idx)
    info = _cached_sliding_block_mask.cache_info()
    assert info.misses == 1 and info.hits == 3  # 2 S layers x 2 calls


def test_flex_is_only_for_windowed_layers_over_the_whole_sequence():
    """A KV-cache prefill or decode (queries != keys) keeps the SDPA path: flex and sdpa models
    decode the same tokens."""
    sdpa, flex = twin_models()
    idx = batch(rows=1, length=40)
    outputs = []
    for model in (sdpa, flex):
        cache = model.make_kv_cache(1, 60)
        with torch.no_grad():
            model(idx[:, :30], kv_cache=cache)
            outputs.append(model(idx[:, 30:], kv_cache=cache))
    assert torch.allclose(outputs[0], outputs[1], atol=2e-5)


def test_flex_backward_equals_sdpa(flex_backward_on_cpu):
    sdpa, flex = twin_models()
    idx = batch()
    targets = torch.roll(idx, -1, dims=1)
    for model in (sdpa, flex):
        model(idx, targets).backward()
    for (name, a), (_, b) in zip(sdpa.named_parameters(), flex.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.slow  # compiling flex_attention on the CPU: ~75 s on 2 busy cores
def test_compiled_flex_forward_equals_sdpa():
    """flex_attention compiled as a whole model compiles it (inside the graph the BlockMask is
    built by the graph, as band_mask is)."""
    q = torch.randn(2, 4, 80, 16)
    k, v = torch.randn(2, 2, 80, 16), torch.randn(2, 2, 80, 16)
    expected = attend(q, k, v, 24, "sdpa")
    compiled = torch.compile(lambda q, k, v: attend(q, k, v, 24, "flex"), dynamic=False)
    with torch.no_grad():
        got = compiled(q, k, v)
    assert torch.allclose(got, expected, atol=2e-5), (got - expected).abs().max()


@pytest.mark.slow
def test_compiled_flex_backward_where_torch_allows(flex_backward_on_cpu):
    """Inductor's CPU flex backward fails in torch 2.13 (IndexError in lowering): skipped then,
    with the error; compared with SDPA wherever it runs."""
    q = torch.randn(2, 4, 80, 16, requires_grad=True)
    k, v = torch.randn(2, 2, 80, 16, requires_grad=True), torch.randn(2, 2, 80, 16, requires_grad=True)
    grad = torch.randn(2, 4, 80, 16)
    attend(q, k, v, 24, "sdpa").backward(grad)
    expected = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    compiled = torch.compile(lambda q, k, v: attend(q, k, v, 24, "flex"), dynamic=False)
    try:
        compiled(q, k, v).backward(grad)
    except Exception as error:  # torch._inductor.exc.InductorError and kin
        pytest.skip(f"compiled flex backward does not run on this CPU torch ({torch.__version__}): "
                    f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")
    for t, want in zip((q, k, v), expected, strict=True):
        assert torch.allclose(t.grad, want, atol=1e-4)


def test_kernel_report_names_each_kind_of_layer():
    sdpa, flex = twin_models()
    report = training_attention_kernels(flex, torch.device("cpu"), torch.float32)
    assert report == [{"window": 24, "layers": [0, 1], "kernel": "flex"},
                      {"window": None, "layers": [2], "kernel": report[1]["kernel"]}]
    assert report[1]["kernel"] in ("FLASH_ATTENTION", "MATH")  # the CPU's SDPA kernels
    masked = training_attention_kernels(sdpa, torch.device("cpu"), torch.float32)
    assert [row["kernel"] != "flex" for row in masked] == [True, True]
