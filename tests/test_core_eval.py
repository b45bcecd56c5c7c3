"""CORE (DCLM's base-model metric, as nanochat computes it) and ChatCORE: a bundle in its real layout
(tests/fixtures/core_bundle: core.yaml, eval_meta_data.csv, eval_data/), nanochat's prompt forms,
the scored token spans, a model that knows the answers scoring 1 and one that does not scoring
below 0, the CLI on a real checkpoint, and bad bundles as one-line errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.errors import BadInput
from workbench.evals import api, common, core, report

BUNDLE = Path(__file__).parent / "fixtures" / "core_bundle"
EVAL_FIXTURES = Path(__file__).parent / "fixtures" / "evals"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_bundle_loads_in_its_real_layout():
    tasks = {task.label: task for task in core.load_bundle(BUNDLE)}
    assert list(tasks) == ["arc_easy", "winograd", "bigbench_repeat_copy_logic"]
    arc, winograd, repeat = tasks.values()
    assert (arc.kind, arc.shots, arc.delimiter, arc.random_baseline) == ("multiple_choice", 10, "\nAnswer: ", 0.25)
    assert (winograd.kind, winograd.shots, winograd.delimiter, winograd.random_baseline) == ("schema", 0, " ", 0.5)
    assert (repeat.kind, repeat.shots, repeat.delimiter, repeat.random_baseline) == ("language_modeling", 3, "\nA: ", 0.0)
    # every record, shuffled into nanochat's order (random.Random(1337))
    records = read_jsonl(BUNDLE / "eval_data" / "world_knowledge" / "arc_easy.jsonl")
    assert sorted(map(json.dumps, arc.items)) == sorted(json.dumps({k: r[k] for k in ("query", "choices", "gold")})
                                                        for r in records)
    assert arc.items != [{k: r[k] for k in ("query", "choices", "gold")} for r in records]
    assert core.figure_label(list(tasks.values())) == "CORE (available tasks: 3 of 22)"


def test_prompts_follow_nanochat_templates():
    mc = core.CoreTask("t", "multiple_choice", 1, "\nAnswer: ", 0.25, [
        {"query": "Question: one?", "choices": ["a", "b"], "gold": 1},
        {"query": "Question: two?", "choices": ["c", "d"], "gold": 0}])
    assert core.prompts(mc, 0) == [("Question: two?\nAnswer: c\n\nQuestion: one?\nAnswer: ", "a"),
                                   ("Question: two?\nAnswer: c\n\nQuestion: one?\nAnswer: ", "b")]
    schema = core.CoreTask("s", "schema", 1, " ", 0.5, [
        {"context_options": ["A x", "A y"], "continuation": "ends.", "gold": 0},
        {"context_options": ["B x", "B y"], "continuation": "stops.", "gold": 1}])
    assert core.prompts(schema, 0) == [("B y stops.\n\nA x ", "ends."), ("B y stops.\n\nA y ", "ends.")]
    lm = core.CoreTask("l", "language_modeling", 1, "\nA: ", 0.0, [
        {"context": "  Q: first  ", "continuation": "one"}, {"context": "Q: second ", "continuation": "two"}])
    assert core.prompts(lm, 1) == [("Q: first\nA: one\n\nQ: second\nA: ", "two")]  # contexts trimmed
    zero_shot = core.CoreTask("z", "multiple_choice", 0, " ", 0.25, mc.items)
    assert core.prompts(zero_shot, 1)[0] == ("Question: two? ", "c")


def test_token_rows_score_only_the_answer(tiny_tokenizer):
    tasks = {task.label: task for task in core.load_bundle(BUNDLE)}
    decode = tiny_tokenizer.decode
    arc = tasks["arc_easy"]
    rows = core.token_rows(tiny_tokenizer, arc, 0, max_len=4096)
    for (ids, start), choice in zip(rows, arc.items[0]["choices"], strict=True):
        assert ids[0] == tiny_tokenizer.bos_id
        assert decode(ids[start:]).strip() == choice  # after the prefix every choice shares
    schema = tasks["winograd"]
    for ids, start in core.token_rows(tiny_tokenizer, schema, 0, max_len=4096):
        assert decode(ids[start:]).strip() == schema.items[0]["continuation"]  # the shared suffix
    repeat = tasks["bigbench_repeat_copy_logic"]
    (ids, start), = core.token_rows(tiny_tokenizer, repeat, 0, max_len=4096)
    assert decode(ids[start:]).strip() == repeat.items[0]["continuation"]
    assert decode(ids[:start]).endswith("\nA:")
    # a context longer than the model's loses tokens from the left, never the answer
    (short, short_start), = core.token_rows(tiny_tokenizer, repeat, 0, max_len=8)
    assert len(short) == 8 and short[short_start:] == ids[start:]


class AnswerSheetModel(torch.nn.Module):
    """A model that has memorised some token rows: on a row that starts like one of them it puts
    all its probability on that row's next token; anywhere else its logits are flat (so greedy
    decoding says token 0). Lets the CORE plumbing be checked against known answers."""

    def __init__(self, rows: list[list[int]], vocab_size: int):
        super().__init__()
        self.rows, self.vocab_size = rows, vocab_size

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, self.vocab_size)
        for b in range(idx.shape[0]):
            for row in self.rows:
                if len(row) - 1 <= idx.shape[1] and idx[b, : len(row) - 1].tolist() == row[:-1]:
                    for t in range(len(row) - 1):
                        logits[b, t, row[t + 1]] = 30.0
        return logits


def answer_rows(tokenizer, tasks, pick) -> list[list[int]]:
    """The token rows of the option `pick(item)` of every item (language modeling: its only row)."""
    rows = []
    for task in tasks:
        for index, item in enumerate(task.items):
            options = core.token_rows(tokenizer, task, index, 4096)
            if task.kind != "language_modeling":
                rows.append(options[pick(item)][0])
            elif pick(item) == item.get("gold", 0):
                rows.append(options[0][0])
    return rows


def test_a_model_that_knows_the_answers_scores_one_and_one_that_does_not_below_zero(tiny_tokenizer):
    tasks = core.load_bundle(BUNDLE)
    vocab = tiny_tokenizer.vocab_size

    right = AnswerSheetModel(answer_rows(tiny_tokenizer, tasks, lambda item: item.get("gold", 0)), vocab)
    result = core.evaluate(right, tiny_tokenizer, tasks, "cpu", 4096, limit=0)
    assert result.task == "core" and result.n == 5 + 4 + 4
    assert {label: entry["accuracy"] for label, entry in result.details["tasks"].items()} == {
        "arc_easy": 1.0, "winograd": 1.0, "bigbench_repeat_copy_logic": 1.0}
    assert result.details["core"] == 1.0

    wrong = AnswerSheetModel(answer_rows(tiny_tokenizer, tasks, lambda item: 1 - item.get("gold", 0)), vocab)
    result = core.evaluate(wrong, tiny_tokenizer, tasks, "cpu", 4096, limit=2)
    per_task = result.details["tasks"]
    assert [entry["n"] for entry in per_task.values()] == [2, 2, 2]
    assert [entry["accuracy"] for entry in per_task.values()] == [0.0, 0.0, 0.0]
    # centered: (0 - 0.25) / 0.75, (0 - 0.5) / 0.5, (0 - 0) / 1
    assert [round(entry["centered"], 4) for entry in per_task.values()] == [-0.3333, -1.0, 0.0]
    assert result.details["core"] == pytest.approx((-1 / 3 - 1.0 + 0.0) / 3)


def test_available_tasks_map_arc_and_hellaswag():
    tasks = {task.label: task for task in core.available_tasks(EVAL_FIXTURES)}
    assert list(tasks) == ["arc_easy", "arc_challenge", "hellaswag_zeroshot", "hellaswag"]
    assert tasks["arc_challenge"].shots == 10 and tasks["arc_challenge"].delimiter == "\nAnswer: "
    assert tasks["hellaswag"].shots == 10 and tasks["hellaswag_zeroshot"].shots == 0
    assert "Roof shingle removal: A man is sitting on a roof. he" in [i["query"] for i in tasks["hellaswag"].items]
    assert core.figure_label(list(tasks.values())) == "CORE (available tasks: 4 of 22)"
    with pytest.raises(BadInput, match="no CORE task data"):
        core.available_tasks(EVAL_FIXTURES / "gsm8k")


def test_chatcore_is_the_mean_centered_accuracy():
    results = {"arc-easy": {"accuracy": 0.25, "letter_accuracy": 0.5, "n": 4},
               "arc-challenge": {"accuracy": 0.25, "n": 4},
               "mmlu": {"accuracy": 1.0, "n": 4},
               "gsm8k": {"accuracy": 0.5, "n": 2},
               "humaneval": {"accuracy": 0.0, "n": 2}}
    result = core.chatcore(results)
    per_task = result.details["tasks"]
    assert per_task["arc-easy"]["form"] == "letter" and per_task["arc-easy"]["centered"] == pytest.approx(1 / 3)
    assert per_task["arc-challenge"]["form"] == "likelihood" and per_task["arc-challenge"]["centered"] == 0.0
    assert result.details["chatcore"] == pytest.approx((1 / 3 + 0.0 + 1.0 + 0.5 + 0.0) / 5)
    assert result.n == 16
    del results["humaneval"]
    assert core.chatcore(results) is None
    assert common.parse_tasks("bpb,chatcore") == ["bpb", "arc-easy", "arc-challenge", "mmlu", "gsm8k", "humaneval",
                                                  "chatcore"]


def test_a_mean_that_cancels_to_zero_prints_as_zero_not_minus_zero():
    # centered 0.35 and 0.15 against chance 0.25 are +-0.1333, whose float mean is -1.4e-17
    tasks = [core.CoreTask(label, "multiple_choice", 0, " ", 0.25, []) for label in ("arc_easy", "arc_challenge")]
    result = core.summarize(tasks, {"arc_easy": 0.35, "arc_challenge": 0.15}, {"arc_easy": 20, "arc_challenge": 20})
    score = result.details["core"]
    assert score == 0.0 and json.dumps(round(score, 4)) == "0.0"  # the speedrun summary's rounding
    assert api.headline("core", result.details) == "0.0000" and report.score_cell("core", result.details) == "0.0000"
    chat = core.chatcore({"arc-easy": {"accuracy": 0.35, "n": 20}, "arc-challenge": {"accuracy": 0.15, "n": 20},
                          "mmlu": {"accuracy": 0.25, "n": 4}, "gsm8k": {"accuracy": 0.0, "n": 2},
                          "humaneval": {"accuracy": 0.0, "n": 2}})
    assert api.headline("chatcore", chat.details) == "0.0000"


def test_eval_cli_reports_core_and_chatcore(tiny_checkpoint, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_checkpoint.parent.parent, run_dir)
    checkpoint = run_dir / "checkpoints" / tiny_checkpoint.name
    assert main(["eval", str(checkpoint), "--tasks", "core,chatcore", "--limit", "2", "--data-dir", str(EVAL_FIXTURES),
                 "--device", "cpu", "--max-new-tokens", "4"]) == 0
    results = json.loads((checkpoint / "evals.json").read_text())
    assert results["core"]["label"] == "CORE (available tasks: 4 of 22)"
    centered = [entry["centered"] for entry in results["core"]["tasks"].values()]
    assert results["core"]["core"] == pytest.approx(sum(centered) / 4)
    assert all(entry["n"] == 2 for entry in results["core"]["tasks"].values())
    chat = results["chatcore"]
    assert set(chat["tasks"]) == set(common.CHATCORE_TASKS)
    assert chat["chatcore"] == pytest.approx(sum(e["centered"] for e in chat["tasks"].values()) / 5)
    assert chat["tasks"]["mmlu"]["accuracy"] == results["mmlu"]["accuracy"]
    out = capsys.readouterr().out
    assert "chatcore" in out and f"{results['core']['core']:.4f}" in out
    records = [r for r in map(json.loads, (run_dir.with_name("tiny-eval") / "metrics.jsonl").read_text().splitlines())
               if r.get("kind") == "eval"]
    assert [r["core"] for r in records if r["task"] == "core"] == [results["core"]["core"]]

    # a bundle in the real layout, from the command line
    assert main(["eval", str(checkpoint), "--tasks", "core", "--core-bundle", str(BUNDLE), "--limit", "0",
                 "--device", "cpu"]) == 0
    bundle_result = json.loads((checkpoint / "evals.json").read_text())["core"]
    assert bundle_result["label"] == "CORE (available tasks: 3 of 22)" and bundle_result["n"] == 13


def broken_bundle(tmp_path: Path, edit) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(BUNDLE, folder)
    edit(folder)
    return folder


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("edit, message", [
    (lambda f: (f / "core.yaml").unlink(), "core.yaml: not found"),
    (lambda f: _replace(f / "core.yaml", "icl_task_type: schema", "icl_task_type: generation"),
     "core.yaml:13: winograd: icl_task_type must be one of"),
    (lambda f: _replace(f / "core.yaml", "num_fewshot: [3]", "num_fewshot: [x]"), "core.yaml:16: "),
    (lambda f: _replace(f / "core.yaml", '"\\nA: "', '"\\nA: '), "core.yaml:18: malformed double-quoted"),
    (lambda f: _replace(f / "eval_meta_data.csv", "winograd,", "winograd_wsc,"), "no 'Random baseline' for task 'winograd'"),
    (lambda f: _replace(f / "eval_meta_data.csv", ",50,,", ",fifty,,"), "eval_meta_data.csv:3: 'Random baseline' must be"),
    # a bundle's missing file points at the bundle's flag, not at --data-dir (which a bundle does not use)
    (lambda f: (f / "eval_data" / "world_knowledge" / "arc_easy.jsonl").unlink(),
     r"arc_easy.jsonl: not found \(a CORE bundle has .*; is [eval] core_bundle / --core-bundle right\?\)$"),
    (lambda f: _replace(f / "eval_data" / "language_understanding" / "winograd_wsc.jsonl", '"gold": 1}', '"gold": 2}'),
     "winograd_wsc.jsonl:2: 'gold' must be an index in 0..1"),
    (lambda f: _replace(f / "eval_data" / "symbolic_problem_solving" / "bigbench_repeat_copy_logic.jsonl",
                        '"continuation": "stone"', '"answer": "stone"'),
     "bigbench_repeat_copy_logic.jsonl:4: missing field 'continuation'"),
    (lambda f: _replace(f / "core.yaml", "num_fewshot: [3]", "num_fewshot: " + "[" * 3000 + "]" * 3000),
     "core.yaml:16: a list inside a list"),
    (lambda f: (f / "core.yaml").write_bytes(b"icl_tasks:\n- label: \xff\xfe\n"), "core.yaml: not UTF-8 \\(byte 20\\)"),
    (lambda f: ((f / "core.yaml").unlink(), os.mkfifo(f / "core.yaml")), "core.yaml: not a regular file \\(a FIFO\\)"),
    (lambda f: ((f / "core.yaml").unlink(), (f / "core.yaml").mkdir()), "core.yaml: not a regular file \\(a folder\\)"),
    # a bundle reads its own eval_data/: a file outside it is never read and scored
    (lambda f: _replace(f / "core.yaml", "world_knowledge/arc_easy.jsonl", "../../outside.jsonl"),
     r"core.yaml:\d+: arc_easy: dataset_uri '../../outside.jsonl' points outside the bundle"),
    (lambda f: _replace(f / "core.yaml", "world_knowledge/arc_easy.jsonl", str(f.parent / "outside.jsonl")),
     r"core.yaml:\d+: arc_easy: dataset_uri '/.*' points outside the bundle"),
])
def test_bad_bundles_are_one_line_errors(tmp_path, edit, message):
    folder = broken_bundle(tmp_path, edit)
    with pytest.raises(BadInput, match=message.replace("[", r"\[").replace("\\n", "\\\\n")):
        core.load_bundle(folder)


def test_bad_bundle_fails_before_the_model_loads(tiny_checkpoint, tmp_path, capsys):
    folder = broken_bundle(tmp_path, lambda f: (f / "eval_meta_data.csv").unlink())
    assert main(["eval", str(tiny_checkpoint), "--tasks", "core", "--core-bundle", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval_meta_data.csv: not found" in err[0]
    assert "--core-bundle" in err[0] and "--data-dir" not in err[0]
    assert main(["eval", str(tiny_checkpoint), "--tasks", "core", "--core-bundle", str(tmp_path / "nope")]) == 2
    assert "CORE bundle folder not found" in capsys.readouterr().err
