"""picochat export: a real checkpoint -> a folder transformers loads, checked against picochat.

The model is a real GPT trained for a few steps on CPU, with grouped-query attention (4 heads,
2 kv heads) and a sliding-window layer (window 8) in front of a full one, so the prompts below
run well past the window. The transformers side runs in a subprocess that never imports
picochat (the export must stand on its own); it is @slow and needs the optional
transformers extra (`make install-hf`), skipping without it. The rest needs no transformers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from workbench.checkpoint import load_checkpoint, quantize_checkpoint
from workbench.checkpoint_files import update_meta
from workbench.cli import main
from workbench.engine import Engine, SamplingParams
from workbench.export import export_checkpoint, hf_name
from workbench.int8 import Int8Linear

WINDOW = 8
MODEL = {"depth": 2, "width": 128, "heads": 4, "kv_heads": 2, "window_pattern": "SL", "short_window": WINDOW}
TEXTS = [  # cut mid-sentence: a tiny model answers a full stop with <|bos|> (a new document)
    "First Citizen:\nBefore we proceed any further, hear me speak,",
    "All:\nSpeak, speak. You are resolved rather to die than to",
    "MENENIUS:\nWhat work's, my countrymen, in hand? Where go you with",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Red."},
     {"role": "user", "content": "And another one?\n"}],
    [{"role": "system", "content": "Use the calculator."},
     {"role": "user", "content": "What is 12 * 7, plus one?"},
     {"role": "assistant", "content": [
         {"type": "thinking", "text": "multiply first"},
         {"type": "text", "text": "12 * 7 is "},
         {"type": "python", "text": "12*7"},
         {"type": "python_output", "text": "84"},
         {"type": "text", "text": ", so the answer is 85."}]},
     {"role": "user", "content": "Thanks!  And 84 / 4?"},
     {"role": "assistant", "content": "21."}],
]


@pytest.fixture(scope="module")
def checkpoint_path(make_tiny_config) -> Path:
    from workbench.train.pretrain import pretrain

    config = make_tiny_config(model=MODEL, train={"steps": 20, "eval_every": 10, "save_every": 10, "sample_every": 0})
    result = pretrain(config, verbose=False)
    assert result.last_checkpoint is not None
    return result.last_checkpoint


@pytest.fixture(scope="module")
def checkpoint(checkpoint_path):
    return load_checkpoint(checkpoint_path)


@pytest.fixture(scope="module")
def hf_dir(checkpoint_path, tmp_path_factory) -> Path:
    return export_checkpoint(checkpoint_path, tmp_path_factory.mktemp("export") / "picochat-hf", "hf")


def prompt_ids(checkpoint) -> list[list[int]]:
    ids = [checkpoint.tokenizer.encode(text, bos=True) for text in TEXTS]
    assert all(2 * WINDOW < len(row) <= 32 for row in ids)  # past the window, room for 32 new tokens
    return ids


# ---------------------------------------------------------------------------------------------
# the folder (no transformers needed)


def test_hf_folder_holds_the_config_code_and_weights_under_the_modeling_names(checkpoint, hf_dir):
    assert sorted(path.name for path in hf_dir.iterdir()) == [
        "README.md", "config.json", "configuration_picochat.py", "generation_config.json", "model.safetensors",
        "modeling_picochat.py", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "picochat"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_picochat.PicochatForCausalLM"
    for field, value in dataclasses.asdict(checkpoint.model.config).items():  # every [model] field, resolved
        assert config[field] == value, field
    assert config["vocab_size"] == checkpoint.tokenizer.vocab_size and config["tie_word_embeddings"] is False

    weights = load_file(str(hf_dir / "model.safetensors"))
    original = checkpoint.model.state_dict()
    assert set(weights) == {hf_name(name) for name in original}
    assert "model.blocks.0.attn.c_q.weight" in weights and "lm_head.weight" in weights
    for name, tensor in original.items():
        assert torch.equal(weights[hf_name(name)], tensor), name

    generation = json.loads((hf_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"][0] == checkpoint.tokenizer.special_id("<|assistant_end|>")
    assert generation["bos_token_id"] == checkpoint.tokenizer.bos_id
    tokenizer_config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == "<|assistant_end|>" and tokenizer_config["bos_token"] == "<|bos|>"
    assert "<|python_start|>" in tokenizer_config["chat_template"]


def test_model_card_figures_come_from_the_checkpoint(checkpoint_path, tmp_path):
    run = shutil.copytree(checkpoint_path.parent.parent, tmp_path / "run")
    copy = run / "checkpoints" / checkpoint_path.name
    assert main(["eval", str(copy), "--tasks", "bpb", "--bpb-tokens", "512"]) == 0
    evals = json.loads((copy / "evals.json").read_text())
    meta = json.loads((copy / "meta.json").read_text())
    assert meta["val_bpb"] != pytest.approx(evals["bpb"]["bpb"], abs=1e-4)  # two figures, told apart below

    card = (export_checkpoint(copy, tmp_path / "out", "hf") / "README.md").read_text()
    assert f"**{meta['val_bpb']:.4f} bits per byte** at step 20 (from meta.json)" in card
    assert f"| bpb | {evals['bpb']['bpb']:.4f} bpb | 512 |" in card
    assert f"{meta['params']:,}" in card and "step 20, 10,240 tokens" in card and "`corpus.txt`" in card

    # Without val_bpb in meta.json the card reads the run's eval record at that step.
    update_meta(copy, val_bpb=None)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r["val_bpb"] for r in records if r.get("kind") == "eval" and r.get("step") == 20]
    card = (export_checkpoint(copy, tmp_path / "out", "hf", force=True) / "README.md").read_text()
    assert f"**{logged[-1]:.4f} bits per byte** at step 20 (from run/metrics.jsonl)" in card

    # Garbage in evals.json loses the table, never the export.
    (copy / "evals.json").write_text('{"bpb": {"bpb": "lots"}, "mmlu": 3}')
    card = (export_checkpoint(copy, tmp_path / "out", "hf", force=True) / "README.md").read_text()
    assert "| bpb |" not in card and "no task evals recorded" in card


def test_safetensors_format_writes_weights_config_and_tokenizer_only(checkpoint_path, checkpoint, tmp_path):
    out = tmp_path / "plain"
    assert main(["export", str(checkpoint_path), "--format", "safetensors", "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and config["window_pattern"] == "SL"
    assert (out / "tokenizer.json").read_text() == checkpoint.tokenizer.to_str()
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == {hf_name(name) for name in checkpoint.model.state_dict()}


def test_int8_checkpoint_exports_dequantized(checkpoint_path, tmp_path):
    int8 = quantize_checkpoint(checkpoint_path, tmp_path / "int8")
    out = export_checkpoint(int8, tmp_path / "out", "hf")
    weights = load_file(str(out / "model.safetensors"))
    quantized = load_checkpoint(int8).model
    linears = {name: module for name, module in quantized.named_modules() if isinstance(module, Int8Linear)}
    assert linears
    for name, module in linears.items():
        assert torch.equal(weights[hf_name(f"{name}.weight")], module.dequantized(torch.float32))
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())
    assert not any(name.endswith("_scale") for name in weights)
    assert "dequantized from an INT8 checkpoint" in (out / "README.md").read_text()


def test_force_replaces_an_earlier_export(checkpoint_path, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from before")
    assert main(["export", str(checkpoint_path), "--out", str(out), "--force"]) == 0
    assert not (out / "stale.txt").exists() and (out / "modeling_picochat.py").exists()
    assert not any(path.name.startswith(".tmp-") for path in tmp_path.iterdir())


def _corrupt_copy(checkpoint_path: Path, tmp_path: Path) -> Path:
    copy = shutil.copytree(checkpoint_path, tmp_path / "broken")
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    return copy


@pytest.mark.parametrize("case", ["unknown format", "non-empty out", "broken checkpoint", "out is the checkpoint"])
def test_bad_input_exits_2_with_one_line(case, checkpoint_path, tmp_path, capsys):
    out = tmp_path / "out"
    source = checkpoint_path
    args = []
    if case == "unknown format":
        args, expected = ["--format", "gguf"], "unknown format 'gguf'"
    elif case == "non-empty out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        expected = "folder is not empty (use --force to replace it)"
    elif case == "broken checkpoint":
        source, expected = _corrupt_copy(checkpoint_path, tmp_path), "corrupt or truncated safetensors file"
    else:
        source = shutil.copytree(checkpoint_path, tmp_path / "step")
        out, args, expected = source, ["--force"], "holds the checkpoint being exported"
    before = sorted(path.name for path in source.iterdir())
    assert main(["export", str(source), "--out", str(out), *args]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("picochat export: error:") and expected in error
    assert sorted(path.name for path in source.iterdir()) == before  # nothing of the checkpoint lost
    if case == "non-empty out":
        assert [path.name for path in out.iterdir()] == ["keep.txt"]
    elif case != "out is the checkpoint":
        assert not out.exists()
    assert not any(path.name.startswith(".tmp-") for path in tmp_path.iterdir())


def test_a_baseline_model_is_refused_with_one_line(make_tiny_config, tmp_path, capsys):
    from workbench.train.pretrain import pretrain

    config = make_tiny_config(model={"kind": "bigram"}, train={"steps": 2, "eval_every": 2, "save_every": 2})
    bigram = pretrain(config, verbose=False).last_checkpoint
    assert main(["export", str(bigram), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "kind 'bigram' does not export; only the gpt model does" in error
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# transformers, in a process that never imports picochat

LOAD_AND_RUN = r'''
import json, sys
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, job_path, out_dir = sys.argv[1:]
job = json.load(open(job_path))
cache_of = lambda out: out["cache"] if "cache" in out else out["past_key_values"]  # transformers 5 / 4
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(folder)  # no flag: the stock fast tokenizer
tensors, results = {}, {"generated": [], "chat": [], "chat_full": [], "encoded": []}
with torch.no_grad():
    for i, ids in enumerate(job["prompts"]):
        x = torch.tensor([ids])
        tensors[f"full{i}"] = model(x).logits[0]
        out = model(x[:, :1], use_cache=True)  # one token at a time, through the sliding cache
        steps = [out.logits]
        for t in range(1, x.size(1)):
            out = model(x[:, t:t + 1], cache=cache_of(out), use_cache=True)
            steps.append(out.logits)
        tensors[f"stepwise{i}"] = torch.cat(steps, 1)[0]
        out = model(x[:, :11], use_cache=True)  # a prefill past the window, then chunks of 4
        chunks = [out.logits]
        for t in range(11, x.size(1), 4):
            out = model(x[:, t:t + 4], cache=cache_of(out), use_cache=True)
            chunks.append(out.logits)
        tensors[f"chunked{i}"] = torch.cat(chunks, 1)[0]
        generated = model.generate(x, max_new_tokens=32, do_sample=False)
        results["generated"].append(generated[0, len(ids):].tolist())
    longest = max(len(ids) for ids in job["prompts"])
    pad = tokenizer.pad_token_id
    batch = torch.tensor([[pad] * (longest - len(ids)) + ids for ids in job["prompts"]])
    mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in job["prompts"]])
    tensors["left_padded"] = model(batch, attention_mask=mask).logits
for conversation in job["conversations"]:
    results["chat"].append(list(tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
                                                                return_dict=False)))
    results["chat_full"].append(list(tokenizer.apply_chat_template(conversation, return_dict=False)))
try:
    tokenizer.apply_chat_template([{"role": "assistant", "content": "hi"}], add_generation_prompt=True)
    results["bad_conversation"] = "accepted"
except Exception as error:
    results["bad_conversation"] = str(error)
results["encoded"] = [tokenizer(text)["input_ids"] for text in job["texts"]]
results["sliding_cache_keys"] = [layer.keys.shape[2] for layer in cache_of(out).layers]
results["picochat_imported"] = any(name.split(".")[0] == "workbench" for name in sys.modules)
save_file({k: v.contiguous() for k, v in tensors.items()}, f"{out_dir}/logits.safetensors")
json.dump(results, open(f"{out_dir}/results.json", "w"))
'''


@pytest.fixture(scope="module")
def transformers_run(checkpoint, hf_dir, tmp_path_factory):
    """Load the export with transformers in a fresh interpreter (offline, its own HF cache, no
    stdin) and run every prompt and conversation through it once."""
    pytest.importorskip("transformers")
    work = tmp_path_factory.mktemp("transformers-run")
    (work / "job.json").write_text(json.dumps({"prompts": prompt_ids(checkpoint), "texts": TEXTS,
                                               "conversations": CONVERSATIONS}))
    (work / "script.py").write_text(LOAD_AND_RUN)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf-home"), "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, "-I", str(work / "script.py"), str(hf_dir), str(work / "job.json"),
                           str(work)], cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((work / "results.json").read_text()), load_file(str(work / "logits.safetensors"))


@pytest.mark.slow
def test_exported_logits_equal_picochats_with_and_without_the_kv_cache(checkpoint, transformers_run):
    results, logits = transformers_run
    assert not results["picochat_imported"]
    assert results["sliding_cache_keys"] == [WINDOW - 1, len(prompt_ids(checkpoint)[-1])]  # the window is kept
    for i, ids in enumerate(prompt_ids(checkpoint)):
        with torch.no_grad():
            reference = checkpoint.model(torch.tensor([ids]))[0]
        for way in ("full", "stepwise", "chunked"):
            assert logits[f"{way}{i}"].shape == reference.shape
            assert (logits[f"{way}{i}"] - reference).abs().max() < 1e-4, (way, i)
        padded = logits["left_padded"][i, -len(ids):]
        assert (padded - reference).abs().max() < 1e-4, ("left padded", i)


@pytest.mark.slow
def test_greedy_generation_equals_picochats(checkpoint, transformers_run):
    results, _ = transformers_run
    engine = Engine(checkpoint.model, checkpoint.tokenizer)
    lengths = []
    for ids, generated in zip(prompt_ids(checkpoint), results["generated"], strict=True):
        expected = engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=32), use_tools=False)[0]
        assert generated == expected.tokens
        # Both stopped at the same place: all 32 tokens, or picochat's own stop token (the tiny model
        # may start a new document); at least one prompt runs the whole 32.
        assert len(generated) == 32 or expected.finish_reason == "stop", (len(generated), expected.finish_reason)
        lengths.append(len(generated))
    assert max(lengths) == 32, lengths


@pytest.mark.slow
def test_chat_template_renders_picochats_ids(checkpoint, transformers_run):
    results, _ = transformers_run
    tokenizer = checkpoint.tokenizer
    for conversation, prompt, full in zip(CONVERSATIONS, results["chat"], results["chat_full"], strict=True):
        assert prompt == tokenizer.render_for_completion(conversation)
        if conversation[-1]["role"] == "assistant":
            assert full == tokenizer.render_conversation(conversation)[0]
    assert "a conversation to complete must end with a user message" in results["bad_conversation"]
    # Plain text gets picochat's document start, <|bos|>, like its training rows.
    assert results["encoded"] == [tokenizer.encode(text, bos=True) for text in TEXTS]
