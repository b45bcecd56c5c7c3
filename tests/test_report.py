"""`picochat report RUN`: the report gathers the run folder, its -sft/-grpo siblings and the
checkpoints' evals.json into report.md and report.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workbench import runs
from workbench.cli import main
from workbench.evals.report import base_run_dir, wall_seconds, write_report

FIXTURES = Path(__file__).parent / "fixtures" / "evals"


@pytest.fixture()
def evaluated_run(tiny_checkpoint, tmp_path) -> Path:
    """A copy of the tiny pretraining run, evaluated on two tasks, plus an -sft sibling written
    through the run-folder contract with a chat checkpoint and its own evals.json."""
    run_dir = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_checkpoint.parent.parent, run_dir)
    checkpoint = run_dir / "checkpoints" / tiny_checkpoint.name
    assert main(["eval", str(checkpoint), "--tasks", "arc-easy,gsm8k", "--limit", "2", "--data-dir", str(FIXTURES),
                 "--device", "cpu", "--max-new-tokens", "8"]) == 0

    sft = run_dir.with_name("tiny-sft")
    writer = runs.RunWriter(sft, "sft", total_steps=2)
    writer.log("sys", step=0, params=123_456, device="cpu", device_name="cpu")
    writer.log("train", step=1, loss=3.0, tokens=100)
    writer.log("train", step=2, loss=2.5, tokens=200)
    writer.log("eval", step=2, val_bpb=1.75, val_loss=2.6)
    writer.finish("done")
    sft_checkpoint = sft / "checkpoints" / "step_000002"
    shutil.copytree(checkpoint, sft_checkpoint)
    meta = json.loads((sft_checkpoint / "meta.json").read_text())
    meta.update(stage="sft", step=2)
    (sft_checkpoint / "meta.json").write_text(json.dumps(meta))
    (sft_checkpoint / "evals.json").write_text(json.dumps({
        "arc-easy": {"accuracy": 0.5, "n": 2, "chance": 0.25, "letter_accuracy": 1.0},
        "mmlu": {"accuracy": 0.25, "n": 4, "chance": 0.25, "subjects": {"anatomy": {"accuracy": 0.25, "n": 4}}},
    }))
    return run_dir


def test_report_gathers_every_stage_and_eval(evaluated_run):
    path = write_report(evaluated_run)
    assert path == evaluated_run / "report.md"
    text = path.read_text()
    data = json.loads((evaluated_run / "report.json").read_text())

    header, rows = data["table"]["header"], data["table"]["rows"]
    assert header[:2] == ["metric", "chance"] and header[2].startswith("pretrain (step ")
    assert header[3] == "sft (step 2)"
    by_metric = {row[0]: row for row in rows}
    assert by_metric["arc-easy"][1] == "25%" and by_metric["arc-easy"][3] == "50.0% (n=2)"
    assert by_metric["arc-easy"][2].endswith("(n=2)")
    assert by_metric["arc-easy, letter answer"][3] == "100.0%"
    assert by_metric["gsm8k"][1] == "0%" and by_metric["mmlu"][2] == "-"
    assert by_metric["parameters"][3] == "123.46k"
    assert by_metric["val bpb (stage's own val data)"][3] == "1.7500"
    assert by_metric["final train loss"][3] == "2.5000"
    for metric in ("wall time", "steps", "tokens", "parameters", "final train loss", "val bpb (stage's own val data)"):
        assert by_metric[metric][2] != "-", metric  # the real pretraining run filled every one

    assert set(data["stages"]) >= {"pretrain", "sft", "eval"}
    assert data["stages"]["pretrain"]["params"] > 0 and data["stages"]["pretrain"]["tokens"] > 0
    assert data["hardware"]["cores"] >= 1 and data["software"]["python"]
    assert "[model]" in data["config_toml"] and "```toml" in text
    assert "| metric | chance |" in text and "## All eval results" in text and "MMLU per subject" in text
    assert "CPU:" in text and "torch" in text


def test_report_from_a_sibling_folder_and_the_cli(evaluated_run, capsys):
    assert base_run_dir(evaluated_run.with_name("tiny-sft")) == evaluated_run
    assert main(["report", str(evaluated_run.with_name("tiny-sft"))]) == 0
    out = capsys.readouterr().out
    assert "report.md" in out and (evaluated_run / "report.json").exists()
    assert main(["report", str(evaluated_run.parent / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_report_of_an_empty_run_folder(tmp_path):
    folder = tmp_path / "fresh"
    folder.mkdir()
    text = write_report(folder).read_text()
    assert "no training or eval results yet" in text


def test_wall_time_leaves_out_long_gaps():
    records = [{"t": 0.0}, {"t": 10.0}, {"t": 20.0}, {"t": 5000.0}, {"t": 5030.0}]
    assert wall_seconds(records) == 50.0
    assert wall_seconds([]) is None


def test_report_shows_core_and_chatcore_per_stage(evaluated_run):
    sft_checkpoint = runs.list_checkpoints(evaluated_run.with_name("tiny-sft"))[-1]
    results = json.loads((sft_checkpoint / "evals.json").read_text())
    results["chatcore"] = {"chatcore": 0.1234, "accuracy": None, "n": 20, "chance": None,
                           "tasks": {"arc-easy": {"accuracy": 0.5, "centered": 0.3333}}}
    results["core"] = {"core": -0.05, "accuracy": None, "n": 8, "chance": None, "label": "CORE (available tasks: 4 of 22)",
                       "tasks": {"arc_easy": {"accuracy": 0.2, "centered": -0.0667}}}
    (sft_checkpoint / "evals.json").write_text(json.dumps(results))
    write_report(evaluated_run)
    table = json.loads((evaluated_run / "report.json").read_text())["table"]
    rows = {row[0]: row for row in table["rows"]}
    assert rows["ChatCORE (centered)"][1:] == ["0", "-", "0.1234"]
    assert rows["CORE (available tasks: 4 of 22) (centered)"][1:] == ["0", "-", "-0.0500"]
    text = (evaluated_run / "report.md").read_text()
    assert "centered arc-easy 0.3333" in text and "base -> SFT -> RL" in text


def test_report_shows_grpos_measured_gain(evaluated_run):
    # GRPO's effect is its paired change of held-out greedy accuracy against the frozen start (issue 19):
    # the report shows it as GRPO's own finish message does, interval and n included.
    grpo = evaluated_run.with_name("tiny-grpo")
    writer = runs.RunWriter(grpo, "grpo", total_steps=2)
    writer.log("eval", step=0, arith_reward=0.3, arith_greedy_accuracy=0.42, arith_held_out=200)
    writer.log("grpo", step=1, reward_mean=0.3, accuracy=0.3)
    writer.log("grpo", step=2, reward_mean=0.5, accuracy=0.5)
    writer.log("eval", step=2, arith_reward=0.55, arith_greedy_accuracy=0.52, arith_held_out=200,
               arith_greedy_gain=0.1, arith_greedy_gain_low=0.043, arith_greedy_gain_high=0.157)
    writer.finish("done")
    write_report(evaluated_run)
    rows = {row[0]: row for row in json.loads((evaluated_run / "report.json").read_text())["table"]["rows"]}
    assert rows["grpo held-out greedy accuracy (paired change, 95% CI)"][-1] == (
        "arith held-out greedy accuracy 0.420 -> 0.520 (+0.100, 95% CI +0.043..+0.157, n=200)")
    assert rows["grpo held-out greedy accuracy (paired change, 95% CI)"][2] == "-"  # pretraining has none
