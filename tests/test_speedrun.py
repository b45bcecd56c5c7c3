"""`picochat speedrun`: every stage in one command, then the report; a second run skips it all."""

import json
from pathlib import Path

import pytest

from workbench import runs
from workbench.cli import main
from workbench.errors import BadInput
from workbench.speedrun import chat_checkpoint
from workbench.stages import run_dir, training_state

ASSET_EVALS = Path(__file__).resolve().parent.parent / "assets" / "evals"


def test_training_status(tmp_path):
    assert training_state(tmp_path, 10) == "new"
    folder = tmp_path / "checkpoints" / "step_000005"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "meta.json").write_text(json.dumps({"step": 5}))
    assert training_state(tmp_path, 10) == "partial"
    assert training_state(tmp_path, 5) == "done"


def _fake_checkpoint(run_dir: Path, step: int) -> Path:
    folder = run_dir / "checkpoints" / f"step_{step:06d}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "meta.json").write_text(json.dumps({"step": step}))
    return folder


def test_make_chat_picks_the_most_post_trained_stage(make_tiny_config, capsys):
    cfg = make_tiny_config()
    config_path = str(cfg.base_dir / "config.toml")
    with pytest.raises(BadInput, match="no checkpoint yet"):
        chat_checkpoint(cfg)
    _fake_checkpoint(cfg.out_dir, 10)
    newest = _fake_checkpoint(cfg.out_dir, 20)
    assert chat_checkpoint(cfg) == newest  # the newest of pretraining
    sft = _fake_checkpoint(run_dir(cfg, "sft"), 5)
    assert chat_checkpoint(cfg) == sft  # a chat model beats a newer base model
    grpo = _fake_checkpoint(run_dir(cfg, "grpo"), 2)
    assert main(["speedrun", config_path, "--chat-checkpoint"]) == 0
    assert capsys.readouterr().out.strip() == str(grpo)


@pytest.mark.slow
def test_speedrun_end_to_end_and_idempotent(make_tiny_config, capsys):
    # data and tokenizer of its own (empty dir / path: under the run folder), so every stage runs
    cfg = make_tiny_config(data={"dir": ""}, tokenizer={"path": ""},
                           train={"steps": 20, "eval_every": 10, "save_every": 10},
                           sft={"steps": 10, "eval_every": 10, "save_every": 10},
                           grpo={"steps": 2, "save_every": 2},
                           eval={"tasks": ["bpb", "chatcore"], "limit": 2, "max_new_tokens": 16,
                                 "data_dir": str(ASSET_EVALS)})  # bundled: no ../shared/data needed
    config_path = str(cfg.base_dir / "config.toml")
    assert main(["speedrun", config_path]) == 0
    output = capsys.readouterr().out
    report = cfg.out_dir / "report.md"
    assert output.strip().splitlines()[-1] == f"report: {report}"
    assert report.exists() and (cfg.out_dir / "report.json").exists()
    stages = ("prepare", "tokenizer", "pretrain", "sft", "grpo", "eval/pretrain", "eval/sft", "eval/grpo")
    for stage in stages:
        assert f"  {stage:<13} ran" in output, stage
    assert "pretrain -> sft -> grpo" in output

    assert runs.read_status(cfg.out_dir)["state"] == "done"
    sft_meta = json.loads((runs.list_checkpoints(run_dir(cfg, "sft"))[-1] / "meta.json").read_text())
    final = runs.list_checkpoints(run_dir(cfg, "grpo"))[-1]
    assert sft_meta["stage"] == "sft" and json.loads((final / "meta.json").read_text())["stage"] == "grpo"
    # base -> SFT -> RL: the same tasks on each stage's last checkpoint, side by side in the report
    tasks = {"bpb", "arc-easy", "arc-challenge", "mmlu", "gsm8k", "humaneval", "chatcore"}
    for stage in ("pretrain", "sft", "grpo"):
        evals = json.loads((runs.list_checkpoints(run_dir(cfg, stage))[-1] / "evals.json").read_text())
        assert set(evals) == tasks and evals["gsm8k"]["limit"] == 2, stage
    table = json.loads((cfg.out_dir / "report.json").read_text())["table"]
    assert [column.split(" ")[0] for column in table["header"][2:]] == ["pretrain", "sft", "grpo"]
    chatcore_row = next(row for row in table["rows"] if row[0] == "ChatCORE (centered)")
    assert all(cell != "-" for cell in chatcore_row[2:]), chatcore_row
    assert "ChatCORE (centered)" in report.read_text()

    # again: everything is complete, so every stage is skipped and only the report is rewritten
    assert main(["speedrun", config_path]) == 0
    again = capsys.readouterr().out
    for stage in stages:
        assert f"speedrun: {stage}: skipped" in again, stage
    assert again.strip().splitlines()[-1] == f"report: {report}"


@pytest.mark.parametrize("name, kind", [("bigram", "bigram"), ("mlp", "mlp"), ("tiny", "gpt")])
def test_shipped_configs_train_and_validate(name, kind, tiny_config, tiny_tokenizer_path, tmp_path):
    # bigram -> MLP -> transformer: each shipped config, as written, trains a few steps on the tiny
    # data (the test's own prepared shards and tokenizer) and logs a validation bpb.
    import dataclasses

    from workbench import config as config_module
    from workbench.train.pretrain import pretrain

    cfg = config_module.load(Path(__file__).resolve().parents[1] / "configs" / f"{name}.toml")
    assert cfg.model.kind == kind and cfg.train.steps == (120 if kind == "mlp" else 300)
    cfg.run = dataclasses.replace(cfg.run, out_dir=str(tmp_path / name), device="cpu")
    cfg.data = dataclasses.replace(cfg.data, dir=str(tiny_config.data_dir))
    cfg.tokenizer = dataclasses.replace(cfg.tokenizer, path=str(tiny_tokenizer_path))
    cfg.train = dataclasses.replace(cfg.train, steps=3, eval_every=3, save_every=3, eval_tokens=2048,
                                    device_batch_size=4, total_batch_tokens=4 * cfg.model.seq_len)
    result = pretrain(cfg, verbose=False)
    assert result.step == 3 and result.last_checkpoint is not None
    val = [r["val_bpb"] for r in runs.read_metrics(cfg.out_dir, kind="eval")]
    assert len(val) == 2 and all(0 < value < 20 for value in val)
    assert json.loads((result.last_checkpoint / "config.json").read_text())["model"]["kind"] == kind
