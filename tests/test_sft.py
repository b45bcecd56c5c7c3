"""SFT end to end on the CPU: the real loop on the tiny pretrained checkpoint, chat batches,
checkpoints marked "sft", exact resume, and a model that learns to end its turn."""

import json
import random
import re
import shutil

import pytest
import torch

from workbench import runs, stages
from workbench.checkpoint import load_checkpoint
from workbench.cli import main
from workbench.config import MAX_SEED
from workbench.errors import BadInput
from workbench.train.sft import chat_probe, sft


def short_chat_file(path, n=300, seed=0):
    """Short exchanges that fit the tiny model's 64-token context whole."""
    rng = random.Random(seed)
    words = ["apple", "house", "river", "stone", "king", "queen", "bread", "night"]
    with open(path, "w") as handle:
        for _ in range(n):
            word = rng.choice(words)
            handle.write(json.dumps({"messages": [{"role": "user", "content": f"Say {word}."},
                                                  {"role": "assistant", "content": f"{word}."}]}) + "\n")
        handle.write('{"messages": [{"role": "assistant", "content": "bad first turn"}]}\n')
    return path


def train_losses(run_dir):
    return {r["step"]: r["loss"] for r in runs.read_metrics(run_dir, kind="train")}


def test_refuses_without_a_pretrained_checkpoint(make_tiny_config, capsys):
    cfg = make_tiny_config()
    with pytest.raises(BadInput, match="picochat pretrain CONFIG"):
        sft(cfg, verbose=False)
    code = main(["sft", str(cfg.base_dir / "config.toml")])
    assert code == 2
    assert "no checkpoint to start sft from" in capsys.readouterr().err


@pytest.mark.slow
def test_sft_teaches_the_chat_format_and_resumes_exactly(make_tiny_config, tiny_checkpoint, tmp_path):
    data = short_chat_file(tmp_path / "chat.jsonl")
    overrides = {"sft": {"init_from": str(tiny_checkpoint), "datasets": [f"{data}:1"], "steps": 40,
                         "device_batch_size": 8, "eval_every": 20, "save_every": 20},
                 "train": {"keep_last": 0}}
    cfg = make_tiny_config(**overrides)
    result = sft(cfg, verbose=False)
    run_dir = stages.run_dir(cfg, "sft")
    assert run_dir.name.endswith("-sft") and result.step == 40 and not result.stopped

    # the checkpoint is a chat model with a resumable sampler position
    meta = json.loads((result.last_checkpoint / "meta.json").read_text())
    assert meta["stage"] == "sft" and meta["sft_state"]["mixture"]["drawn"] == 40 * 8
    assert meta["init_from"] == str(tiny_checkpoint)

    # before SFT no sampled reply ends the turn; after it nearly all do
    evals = runs.read_metrics(run_dir, kind="eval")
    assert [r["step"] for r in evals] == [0, 20, 40]
    assert evals[0]["end_rate"] == 0.0 and evals[-1]["end_rate"] >= 0.8
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] / 2
    events = [r["message"] for r in runs.read_metrics(run_dir, kind="event")]
    assert any("skipped 1 (wrong alternation: 1" in message for message in events)  # the bad line, reported

    checkpoint = load_checkpoint(result.last_checkpoint)
    probes = [([{"role": "user", "content": "Say river."}], None)] * 8
    rates, (_, reply) = chat_probe(checkpoint.model, checkpoint.tokenizer, probes, "cpu")
    assert rates["end_rate"] >= 0.8 and reply.endswith("<|assistant_end|>")

    # stop after step 20 (keep that checkpoint only) and resume: steps 21..40 are identical
    cut = make_tiny_config(**overrides)
    shutil.copytree(run_dir / "checkpoints" / "step_000020", stages.run_dir(cut, "sft") / "checkpoints" / "step_000020")
    with pytest.raises(BadInput, match="--resume"):
        sft(cut, verbose=False)
    resumed = sft(cut, resume=True, verbose=False)
    assert resumed.step == 40
    full, again = train_losses(run_dir), train_losses(stages.run_dir(cut, "sft"))
    assert sorted(again) == list(range(21, 41))
    assert all(again[step] == full[step] for step in again)
    a = load_checkpoint(result.last_checkpoint).model.state_dict()
    b = load_checkpoint(resumed.last_checkpoint).model.state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_thirty_facts_from_a_folder_without_meta_json_train_on_all_without_evaluations(
        make_tiny_config, tiny_checkpoint, tmp_path, capsys):
    bare = tmp_path / "bare"  # weights + config + tokenizer, as picochat-rs ships a model
    bare.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        shutil.copy(tiny_checkpoint / name, bare / name)
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Fact {i}?"},
                                                      {"role": "assistant", "content": f"F{i}."}]}) + "\n"
                             for i in range(30)))
    cfg = make_tiny_config(sft={"init_from": str(bare), "datasets": [str(facts)], "steps": 4, "device_batch_size": 8,
                                "val_fraction": 0.0, "eval_every": 0, "save_every": 4})
    result = sft(cfg, verbose=False)
    assert result.step == 4 and not result.stopped
    run_dir = stages.run_dir(cfg, "sft")
    assert runs.read_metrics(run_dir, kind="eval") == []  # eval_every = 0: never
    events = [r["message"] for r in runs.read_metrics(run_dir, kind="event")]
    assert "no evaluations: [sft] eval_every = 0" in events
    meta = json.loads((result.last_checkpoint / "meta.json").read_text())
    assert meta["sft_state"]["mixture"]["counts"] == {str(facts): 32}  # nothing held out of the 30
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"{bare}: no meta.json" in err


def test_the_chat_probe_takes_any_run_seed_up_to_the_largest(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    probes = [([{"role": "user", "content": f"Say {word}."}], None) for word in ("river", "stone", "king")]
    for seed in (0, MAX_SEED - 1, MAX_SEED):  # one seed per prompt, every one of them the sampler's to take
        rates, _ = chat_probe(checkpoint.model, checkpoint.tokenizer, probes, "cpu", seed=seed, max_tokens=2)
        assert 0.0 <= rates["end_rate"] <= 1.0


def test_the_console_says_why_nothing_is_evaluated_and_prints_counts_as_counts(
        make_tiny_config, tiny_checkpoint, tmp_path, capsys):
    def write_chat(path, long_every):
        # a user turn longer than the tiny model's context leaves nothing to learn after the cut
        path.write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": f"Fact {i}?" + (" word" * 200 if i % long_every == 0 else "")},
            {"role": "assistant", "content": f"F{i}."}]}) + "\n" for i in range(40)))
        return path

    # eval_every asked for, but val_fraction = 0 holds nothing out: said on the console too, not only in metrics.jsonl
    facts = write_chat(tmp_path / "facts.jsonl", long_every=1000)
    cfg = make_tiny_config(sft={"init_from": str(tiny_checkpoint), "datasets": [str(facts)], "steps": 2,
                                "device_batch_size": 4, "val_fraction": 0.0, "eval_every": 2, "save_every": 2})
    sft(cfg, verbose=True)
    out = capsys.readouterr().out
    assert "sft: no evaluations: nothing held out ([sft] val_fraction" in out

    # with evaluations: counts print as integers, the skipped ones as prose (metrics.jsonl unchanged)
    long_facts = write_chat(tmp_path / "long.jsonl", long_every=2)
    cfg = make_tiny_config(sft={"init_from": str(tiny_checkpoint), "datasets": [str(long_facts)], "steps": 2,
                                "device_batch_size": 4, "val_fraction": 0.5, "eval_every": 2, "save_every": 2})
    sft(cfg, verbose=True)
    out = capsys.readouterr().out
    eval_lines = [line for line in out.splitlines() if "| conversations " in line]
    assert eval_lines and all(re.search(r"\| truncated \d+ \| conversations \d+$", line) for line in eval_lines)
    assert re.search(r"\| end_rate \d\.\d{4}", eval_lines[0])  # rates keep their four decimals
    done = next(line for line in out.splitlines() if line.startswith("sft: done:"))
    assert re.search(r"\d+ truncated to 65 tokens, \d+ skipped: nothing to learn after truncation\)", done), done
    assert "{" not in done
    evals = runs.read_metrics(stages.run_dir(cfg, "sft"), kind="eval")
    assert evals and all(isinstance(record["conversations"], int) for record in evals)
