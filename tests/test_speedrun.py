"""`picochat speedrun`: every stage in one command, then the report; a second run skips it all."""

import json
from pathlib import Path

import pytest

from workbench import runs
from workbench.cli import main
from workbench.speedrun import _training_status

ASSET_EVALS = Path(__file__).resolve().parent.parent / "assets" / "evals"


def test_training_status(tmp_path):
    assert _training_status(tmp_path, 10) == "new"
    folder = tmp_path / "checkpoints" / "step_000005"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "meta.json").write_text(json.dumps({"step": 5}))
    assert _training_status(tmp_path, 10) == "partial"
    assert _training_status(tmp_path, 5) == "done"


@pytest.mark.slow
def test_speedrun_end_to_end_and_idempotent(make_tiny_config, capsys):
    # data and tokenizer of its own (empty dir / path: under the run folder), so every stage runs
    cfg = make_tiny_config(data={"dir": ""}, tokenizer={"path": ""},
                           train={"steps": 20, "eval_every": 10, "save_every": 10},
                           sft={"steps": 10, "eval_every": 10, "save_every": 10},
                           grpo={"steps": 2, "save_every": 2},
                           eval={"tasks": ["bpb", "gsm8k"], "limit": 2, "max_new_tokens": 16,
                                 "data_dir": str(ASSET_EVALS)})  # bundled: no ../shared/data needed
    config_path = str(cfg.base_dir / "config.toml")
    assert main(["speedrun", config_path]) == 0
    output = capsys.readouterr().out
    report = cfg.out_dir / "report.md"
    assert output.strip().splitlines()[-1] == f"report: {report}"
    assert report.exists() and (cfg.out_dir / "report.json").exists()
    for stage in ("prepare", "tokenizer", "pretrain", "sft", "grpo", "eval"):
        assert f"  {stage:<10} ran" in output, stage

    assert runs.read_status(cfg.out_dir)["state"] == "done"
    sft_meta = json.loads((runs.list_checkpoints(cfg.stage_dir("sft"))[-1] / "meta.json").read_text())
    final = runs.list_checkpoints(cfg.stage_dir("grpo"))[-1]
    assert sft_meta["stage"] == "sft" and json.loads((final / "meta.json").read_text())["stage"] == "grpo"
    evals = json.loads((final / "evals.json").read_text())
    assert set(evals) == {"bpb", "gsm8k"}
    assert "gsm8k" in report.read_text()

    # again: everything is complete, so every stage is skipped and only the report is rewritten
    assert main(["speedrun", config_path]) == 0
    again = capsys.readouterr().out
    for stage in ("prepare", "tokenizer", "pretrain", "sft", "grpo", "eval"):
        assert f"speedrun: {stage}: skipped" in again, stage
    assert again.strip().splitlines()[-1] == f"report: {report}"
