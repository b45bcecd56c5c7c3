"""`picochat eval` on a real tiny checkpoint (conftest's tiny_checkpoint) over the fixture eval files:
every task runs, results land in evals.json and the run folder, batching does not change scores,
chat checkpoints get the letter answer, a live training run's status is left alone, and a bad
eval file fails the CLI with one line and exit code 2."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from workbench import runs
from workbench.checkpoint import load_checkpoint
from workbench.cli import main
from workbench.evals import multiple_choice
from workbench.tasks import arc as arc_task
from workbench.tasks import hellaswag as hellaswag_task

FIXTURES = Path(__file__).parent / "fixtures" / "evals"


@pytest.fixture()
def run_copy(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny run folder (evals write into it), returning its checkpoint."""
    run_dir = tmp_path / "tiny-run"
    shutil.copytree(tiny_checkpoint.parent.parent, run_dir)
    return run_dir / "checkpoints" / tiny_checkpoint.name


def test_eval_cli_runs_every_task(run_copy, capsys):
    code = main(["eval", str(run_copy.parent.parent), "--tasks", "all", "--limit", "3",
                 "--data-dir", str(FIXTURES), "--device", "cpu", "--max-new-tokens", "12", "--bpb-tokens", "512"])
    assert code == 0
    results = json.loads((run_copy / "evals.json").read_text())
    assert list(results) == ["bpb", "arc-easy", "arc-challenge", "mmlu", "hellaswag", "gsm8k", "humaneval", "core",
                             "chatcore"]
    assert 0 < results["bpb"]["bpb"] < 20 and results["bpb"]["chance"] is None
    for task in ("arc-easy", "arc-challenge", "mmlu", "hellaswag"):
        assert results[task]["n"] == 3 and results[task]["chance"] == 0.25
        assert 0.0 <= results[task]["accuracy"] <= 1.0 and "letter_accuracy" not in results[task]
    assert set(results["mmlu"]["subjects"]) == {"abstract_algebra", "anatomy", "astronomy"}
    for task in ("gsm8k", "humaneval"):
        assert results[task]["n"] == 3 and results[task]["chance"] == 0.0
        assert "well_formed_share" in results[task] and results[task]["prompt"] == "plain"
        assert results[task]["completion_tokens"] > 1 and "prompt_truncated_share" in results[task]
    assert sum(results["humaneval"]["outcomes"].values()) == 3
    out = capsys.readouterr().out
    assert "arc-challenge" in out and "evals.json" in out

    run_dir = run_copy.parent.parent
    records = runs.read_metrics(run_dir.with_name(run_dir.name + "-eval"))  # evals write beside the run
    evals = [r for r in records if r["kind"] == "eval" and r["stage"] == "eval"]
    assert [r["task"] for r in evals] == list(results)
    assert evals[1]["arc-easy"] == results["arc-easy"]["accuracy"]
    progress = [r for r in records if r["kind"] == "progress" and r["stage"] == "eval"]
    assert {r["task"] for r in progress} == set(results) - {"chatcore"}  # computed from the others' results
    assert all(r["done"] <= r["total"] for r in progress if r["total"])
    status = runs.read_status(run_dir.with_name(run_dir.name + "-eval"))
    assert status["state"] == "done" and status["stage"] == "eval"
    assert runs.read_status(run_dir)["stage"] == "pretrain"

    # a second run of one task replaces that task and keeps the others
    assert main(["eval", str(run_copy), "--tasks", "arc-easy", "--limit", "2", "--data-dir", str(FIXTURES),
                 "--device", "cpu"]) == 0
    again = json.loads((run_copy / "evals.json").read_text())
    assert again["arc-easy"]["n"] == 2 and again["hellaswag"] == results["hellaswag"]


def test_batched_likelihoods_equal_one_row_at_a_time(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    items = hellaswag_task.load(FIXTURES / "hellaswag" / "hellaswag_val.preprocessed.jsonl")
    items += arc_task.load(FIXTURES / "arc" / "llm-foundry" / "arc_easy.jsonl")
    max_len = checkpoint.config.model.seq_len
    by_mean, by_sum = multiple_choice.likelihood_predictions(model, tokenizer, items, "cpu", max_len)

    expected_mean, expected_sum = [], []
    rows = multiple_choice.choice_rows(tokenizer, items, max_len)
    with torch.inference_mode():
        for i in range(len(items)):
            means, sums = [], []
            for _, _, ids, start in [row for row in rows if row[0] == i]:
                logits = model(torch.tensor([ids[:-1]]))
                logprobs = torch.log_softmax(logits.float(), dim=-1)[0]
                picked = [float(logprobs[t - 1, ids[t]]) for t in range(start, len(ids))]
                sums.append(sum(picked))
                means.append(sum(picked) / len(picked))
            expected_mean.append(max(range(len(means)), key=means.__getitem__))
            expected_sum.append(max(range(len(sums)), key=sums.__getitem__))
    assert by_mean == expected_mean and by_sum == expected_sum


def test_chat_checkpoints_also_answer_with_a_letter(run_copy):
    meta_path = run_copy / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["stage"] = "sft"
    meta_path.write_text(json.dumps(meta))
    assert main(["eval", str(run_copy), "--tasks", "arc-challenge,gsm8k", "--limit", "2",
                 "--data-dir", str(FIXTURES), "--device", "cpu", "--max-new-tokens", "8"]) == 0
    results = json.loads((run_copy / "evals.json").read_text())
    assert 0.0 <= results["arc-challenge"]["letter_accuracy"] <= 1.0
    assert results["gsm8k"]["prompt"] == "chat"


def test_training_status_is_never_clobbered(run_copy):
    run_dir = run_copy.parent.parent
    live = {"state": "running", "stage": "pretrain", "pid": os.getpid(), "heartbeat": time.time(), "step": 7}
    (run_dir / "status.json").write_text(json.dumps(live))
    assert main(["eval", str(run_copy), "--tasks", "hellaswag", "--limit", "1", "--data-dir", str(FIXTURES),
                 "--device", "cpu"]) == 0
    assert runs.read_status(run_dir)["stage"] == "pretrain"
    sibling = run_dir.with_name(run_dir.name + "-eval")
    assert runs.read_status(sibling)["state"] == "done"
    assert [r["task"] for r in runs.read_metrics(sibling, kind="eval")] == ["hellaswag"]
    finished = {"state": "done", "stage": "pretrain", "step": 7, "message": "stopped at step 7 of 9"}
    (run_dir / "status.json").write_text(json.dumps(finished))
    assert main(["eval", str(run_copy), "--tasks", "hellaswag", "--limit", "1", "--data-dir", str(FIXTURES),
                 "--device", "cpu"]) == 0
    assert runs.read_status(run_dir) == finished


def test_bad_eval_file_is_one_line_exit_2(run_copy, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    bad = data / "gsm8k" / "test.jsonl"
    lines = bad.read_text().splitlines()
    lines[2] = '{"question": "How many?", "answer": 12}'
    bad.write_text("\n".join(lines) + "\n")
    code = main(["eval", str(run_copy), "--tasks", "arc-easy,gsm8k", "--data-dir", str(data), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and f"{bad}:3:" in err and "'answer' must be str" in err
    assert not (run_copy / "evals.json").exists()  # nothing ran: files are checked before the model loads

    assert main(["eval", str(run_copy), "--tasks", "arc-eazy"]) == 2
    assert "did you mean 'arc-easy'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere"), "--tasks", "bpb"]) == 2


def test_scores_are_finite_numbers(run_copy):
    assert main(["eval", str(run_copy), "--tasks", "mmlu", "--limit", "3", "--data-dir", str(FIXTURES),
                 "--device", "cpu"]) == 0
    result = json.loads((run_copy / "evals.json").read_text())["mmlu"]
    assert math.isfinite(result["accuracy"]) and math.isfinite(result["subject_mean_accuracy"])


def test_a_stop_request_ends_the_eval_between_batches(tmp_path):
    from rich.progress import Progress

    from workbench.evals.api import EvalStopped, Reporter

    writer = runs.RunWriter(tmp_path / "run", "eval")
    with Progress(disable=True) as bar:
        reporter = Reporter(writer, bar)
        reporter.start("arc-easy", 10)
        reporter(1, 10)
        runs.send_control(tmp_path / "run", "stop")
        reporter.last = 0.0  # the run folder is polled at most every half second
        with pytest.raises(EvalStopped, match="arc-easy"):
            reporter(2, 10)
