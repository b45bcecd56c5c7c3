"""INT8 weight-only quantization: the file really stores int8, loads back, and stays close to fp32."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from workbench.checkpoint import load_checkpoint, quantize_checkpoint
from workbench.cli import main
from workbench.engine import Engine, SamplingParams
from workbench.errors import BadInput
from workbench.int8 import Int8Linear, quantize_weight


@pytest.fixture(scope="module")
def int8_checkpoint(tiny_checkpoint, tmp_path_factory):
    return quantize_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("int8") / "step_int8")


def test_quantize_weight_round_trips_within_half_a_step():
    weight = torch.randn(32, 48)
    quantized, scale = quantize_weight(weight)
    assert quantized.dtype == torch.int8 and scale.shape == (32,)
    error = (quantized.float() * scale[:, None] - weight).abs()
    assert (error <= scale[:, None] / 2 + 1e-6).all()


def test_int8_checkpoint_really_stores_int8(tiny_checkpoint, int8_checkpoint):
    meta = json.loads((int8_checkpoint / "meta.json").read_text())
    assert meta["quantization"] == "int8"
    original = load_checkpoint(tiny_checkpoint).model
    linear_names = [name for name, module in original.named_modules() if isinstance(module, torch.nn.Linear)]
    assert linear_names
    with safe_open(str(int8_checkpoint / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        for name in linear_names:
            assert handle.get_tensor(f"{name}.weight").dtype == torch.int8
            scale = handle.get_tensor(f"{name}.weight_scale")
            assert scale.dtype == torch.float32 and scale.ndim == 1
        assert handle.get_tensor("wte.weight").dtype == torch.float32  # the embedding stays float
    assert all(key.endswith((".weight", ".weight_scale")) or "lambdas" in key for key in keys)
    size = (int8_checkpoint / "model.safetensors").stat().st_size
    assert size < 0.7 * (tiny_checkpoint / "model.safetensors").stat().st_size


def test_int8_logits_are_close_to_fp32(tiny_checkpoint, int8_checkpoint):
    original = load_checkpoint(tiny_checkpoint)
    quantized = load_checkpoint(int8_checkpoint)
    assert any(isinstance(m, Int8Linear) for m in quantized.model.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.model.modules())
    ids = torch.tensor([original.tokenizer.encode("First Citizen:\nBefore we proceed any further", bos=True)])
    with torch.no_grad():
        reference, approximate = original.model(ids), quantized.model(ids)
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(), approximate.flatten(), dim=0)
    assert cosine > 0.999
    assert (reference - approximate).abs().max() < 0.05 * reference.abs().max()
    assert (reference.argmax(-1) == approximate.argmax(-1)).float().mean() > 0.8


def test_int8_checkpoint_generates_through_the_engine(int8_checkpoint):
    engine = Engine.from_checkpoint(int8_checkpoint, device="cpu")
    events = list(engine.stream_chat([{"role": "user", "content": "Hello"}],
                                     SamplingParams(temperature=0.0, max_tokens=12)))
    assert events[-1].kind == "done" and events[-1].completion_tokens >= 1
    bf16 = Engine.from_checkpoint(int8_checkpoint, device="cpu", dtype="bfloat16")
    assert bf16.generate([bf16.tokenizer.bos_id], SamplingParams(temperature=0.0, max_tokens=5))[0].tokens


def test_quantize_cli_reports_size_speed_and_bpb(tiny_checkpoint, tiny_data, tmp_path, capsys):
    out = tmp_path / "q"
    code = main(["quantize", str(tiny_checkpoint), "--out", str(out), "--eval-tokens", "1024",
                 "--decode-tokens", "8"])
    printed = capsys.readouterr().out
    assert code == 0
    assert (out / "model.safetensors").exists() and not list(tmp_path.glob(".tmp-*"))
    assert "MB ->" in printed and "tok/s" in printed and "val bpb" in printed


def test_quantize_of_a_model_whose_context_the_speed_test_outgrows(tiny_checkpoint, tmp_path, capsys):
    """A small seq_len (64, say) cannot hold the speed test's prompt + 64 decoded tokens: the copy is
    still written and the comparison says it skipped the speed (a ValueError traceback before)."""
    code = main(["quantize", str(tiny_checkpoint), "--out", str(tmp_path / "q"), "--eval-tokens", "0",
                 "--decode-tokens", "100000"])
    captured = capsys.readouterr()
    assert code == 0 and (tmp_path / "q" / "model.safetensors").exists()
    assert "decode speed: skipped" in captured.out and "Traceback" not in captured.err


def test_quantize_bad_input(tiny_checkpoint, int8_checkpoint, tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "missing")]) == 2
    assert main(["quantize", str(int8_checkpoint), "--out", str(tmp_path / "again")]) == 2
    assert "already an INT8" in capsys.readouterr().err
    # a float checkpoint that claims to be int8 is refused with a message naming the file
    fake = tmp_path / "fake"
    shutil.copytree(tiny_checkpoint, fake)
    meta = json.loads((fake / "meta.json").read_text())
    (fake / "meta.json").write_text(json.dumps({**meta, "quantization": "int8"}))
    with pytest.raises(BadInput, match="model.safetensors"):
        load_checkpoint(fake)
