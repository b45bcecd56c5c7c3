"""Eval scoring with known answers (no model): a perfect answer sheet scores 100%, a wrong one 0%,
on the first real records of every eval file (tests/fixtures/evals); reasoning metrics; bad eval
files are BadInput naming the file and the line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workbench.errors import BadInput
from workbench.evals import common, gsm8k, humaneval, multiple_choice
from workbench.tasks import arc as arc_task
from workbench.tasks import gsm8k as gsm8k_task
from workbench.tasks import hellaswag as hellaswag_task
from workbench.tasks import humaneval as humaneval_task
from workbench.tasks import mmlu as mmlu_task
from workbench.tasks.answers import final_number
from workbench.tasks.answers import parse_text as parse_completion

FIXTURES = Path(__file__).parent / "fixtures" / "evals"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MC_TASKS = ("arc-easy", "arc-challenge", "mmlu", "hellaswag")


def fixture_path(task: str) -> Path:
    return FIXTURES / common.TASKS[task][0]


# ---------------------------------------------------------------------------------------------
# multiple choice


@pytest.mark.parametrize("task", MC_TASKS)
def test_multiple_choice_answer_sheets(task):
    items = multiple_choice.load(task, fixture_path(task))
    assert len(items) == (9 if task == "mmlu" else 5)
    gold = [item.gold for item in items]
    wrong = [(item.gold + 1) % len(item.choices) for item in items]

    perfect = multiple_choice.score(task, items, gold, letter_predictions=gold, sum_predictions=gold)
    assert perfect.accuracy == 1.0 and perfect.n == len(items) and perfect.chance == 0.25
    assert perfect.details["letter_accuracy"] == 1.0 and perfect.details["accuracy_sum"] == 1.0
    assert multiple_choice.score(task, items, wrong, letter_predictions=wrong).accuracy == 0.0
    half = gold[:2] + wrong[2:4]
    assert multiple_choice.score(task, items[:4], half).accuracy == 0.5


def test_known_records_parse_as_published():
    arc = arc_task.load(fixture_path("arc-easy"))
    assert arc[0].question.startswith("Which statement best explains why photosynthesis")
    assert arc[0].context.endswith("\nAnswer:") and arc[0].gold == 0 and len(arc[0].choices) == 4
    hellaswag = hellaswag_task.load(fixture_path("hellaswag"))
    assert hellaswag[0].context == "Roof shingle removal: A man is sitting on a roof. he"
    assert hellaswag[0].gold == 3
    mmlu = mmlu_task.load(fixture_path("mmlu"))
    assert mmlu[0].subject == "abstract_algebra" and mmlu[0].gold == "ABCD".index("B")
    assert mmlu[0].choices == ["0", "4", "2", "6"]


def test_mmlu_per_subject_scores_and_spread_limit():
    items = mmlu_task.load(fixture_path("mmlu"))
    chosen = multiple_choice.select(items, 4)
    assert [item.subject for item in chosen] == ["abstract_algebra", "anatomy", "astronomy", "abstract_algebra"]
    predictions = [item.gold if item.subject == "anatomy" else (item.gold + 1) % 4 for item in items]
    result = multiple_choice.score("mmlu", items, predictions)
    subjects = result.details["subjects"]
    assert subjects["anatomy"] == {"correct": 3, "n": 3, "accuracy": 1.0}
    assert subjects["astronomy"]["accuracy"] == 0.0
    assert result.accuracy == pytest.approx(1 / 3)
    assert multiple_choice.select(items, 0) == items  # 0 = all


def test_choice_rows_score_only_the_continuation(tiny_tokenizer):
    item = multiple_choice.Item(context="Question: What is red?\nAnswer:", choices=["the sun", "an apple"],
                                gold=1, question="What is red?")
    rows = multiple_choice.choice_rows(tiny_tokenizer, [item], max_len=64)
    for _, j, ids, start in rows:
        assert ids[0] == tiny_tokenizer.bos_id
        assert tiny_tokenizer.decode(ids[start:]).strip() == item.choices[j]
    # too long for the model: tokens go from the left, the whole continuation stays
    short = multiple_choice.choice_rows(tiny_tokenizer, [item], max_len=6)
    for _, j, ids, start in short:
        assert len(ids) <= 6 and start >= 1 and tiny_tokenizer.decode(ids[start:]).strip() == item.choices[j]


# ---------------------------------------------------------------------------------------------
# GSM8K and the reasoning metrics


def test_gsm8k_answer_sheets():
    problems = gsm8k_task.load(fixture_path("gsm8k"))
    assert problems[0].answer == "18"
    perfect = gsm8k.score(problems, [p.solution for p in problems])
    assert perfect.accuracy == 1.0 and perfect.chance == 0.0 and perfect.details["answered_share"] == 1.0
    wrong = gsm8k.score(problems, [f"I think it is {int(p.answer) + 1}." for p in problems])
    assert wrong.accuracy == 0.0
    empty = gsm8k.score(problems, ["no idea"] * len(problems))
    assert empty.accuracy == 0.0 and empty.details["answered_share"] == 0.0


@pytest.mark.parametrize("text, expected", [
    ("#### 72", "72"),
    ("so 3 + 4 = 7 and then 1,234 total", "1234"),
    ("She earns $18.00 a day.", "18"),
    ("#### 5 but later 9", "5"),
    ("first #### 3 then #### 4", "4"),
    ("it is -2.5", "-2.5"),
    ("nothing here", None),
])
def test_gsm8k_final_number(text, expected):
    assert final_number(text) == expected


def test_gsm8k_tool_calls_and_thoughts():
    problem = gsm8k.Problem(question="6 times 7?", solution="#### 42", answer="42")
    with_tool = ("<|python_start|>6*7<|python_end|><|output_start|>42<|output_end|> #### 42<|assistant_end|>")
    thought = "<|think_start|>6 sevens are 42, not 41<|think_end|>The answer is 42.<|assistant_end|>ignored 9"
    unclosed = "<|think_start|>6 times 7 is 42 and so on"  # cut off by the token limit: not an answer
    wrong_after_thought = "<|think_start|>hmm 42<|think_end|>#### 41"
    result = gsm8k.score([problem] * 5, [with_tool, thought, unclosed, wrong_after_thought, "42"],
                         count_tokens=lambda text: len(text.split()))
    assert result.accuracy == pytest.approx(3 / 5)
    details = result.details
    assert details["thought_share"] == pytest.approx(3 / 5)
    assert details["well_formed_share"] == pytest.approx(2 / 5)
    assert details["accuracy_with_thought"] == pytest.approx(1 / 3)
    assert details["accuracy_without_thought"] == 1.0
    assert details["n_with_thought"] == 3
    assert details["thought_tokens"] == pytest.approx((6 + 8 + 2) / 3)


def test_parse_completion_forms():
    parsed = parse_completion("<|think_start|>a<|think_end|>  ")
    assert parsed.thought == "a" and not parsed.well_formed  # no answer after the thought
    parsed = parse_completion("Sure. <|think_start|>a<|think_end|>b")
    assert not parsed.well_formed  # the thought must come first
    parsed = parse_completion("x <|python_start|>2+3<|python_end|><|output_start|>5<|output_end|> y")
    assert parsed.thought is None and parsed.answer == "x 5 y"


# ---------------------------------------------------------------------------------------------
# HumanEval (programs run in the sandbox)


def test_humaneval_answer_sheets():
    problems = humaneval_task.load(fixture_path("humaneval"))
    canonical = humaneval.score(problems, [p.canonical_solution for p in problems], timeout=20)
    assert canonical.accuracy == 1.0 and canonical.details["outcomes"] == {"passed": 5}
    chat_form = [f"<|think_start|>easy<|think_end|>Here:\n```python\n{p.prompt}{p.canonical_solution}```\nDone."
                 for p in problems]
    assert humaneval.score(problems, chat_form, timeout=20).accuracy == 1.0
    wrong = humaneval.score(problems, ["    raise NotImplementedError\n"] * len(problems), timeout=20)
    assert wrong.accuracy == 0.0 and wrong.details["outcomes"] == {"failed": 5}
    assert wrong.details["failures"][0]["error"] == "NotImplementedError"


def test_humaneval_base_completion_is_cut_at_the_next_top_level_line():
    problem = humaneval_task.load(fixture_path("humaneval"))[0]
    text = problem.canonical_solution + "\n\ndef another():\n    while True: pass\n"
    program = humaneval_task.assemble_program(problem, text)
    assert "another" not in program and program.rstrip().endswith(f"check({problem.entry_point})")


# ---------------------------------------------------------------------------------------------
# bad eval files: BadInput with FILE:LINE


def _bad_copy(tmp_path: Path, task: str, line_number: int, new_line: str) -> Path:
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    path = data / common.TASKS[task][0]
    if task == "mmlu":
        path = path / "anatomy_test.csv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[line_number - 1] = new_line + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    return path


BAD_FILES = [
    ("arc-easy", 2, '{"query": "Question: x?", "choices": ["a", "b"], "gold": 5}', "gold answer"),
    ("arc-challenge", 3, "{not json", "not valid JSON"),
    ("hellaswag", 2, '{"ctx": "c", "endings": ["a", "b", "c"], "label": 0}', "expected 4 choices"),
    ("mmlu", 2, "a question,1,2,3,4,E", "answer must be one of"),
    ("mmlu", 3, "a question,1,2,B", "expected 6 columns"),
    ("gsm8k", 4, '{"question": "q", "answer": "no final line"}', "####"),
    ("humaneval", 1, '{"task_id": "x", "prompt": "def f():\\n"}', "missing field"),
    ("arc-easy", 5, "[1, 2]", "expected a JSON object"),
]


@pytest.mark.parametrize("task, line, content, message", BAD_FILES)
def test_bad_eval_files_name_file_and_line(tmp_path, task, line, content, message):
    path = _bad_copy(tmp_path, task, line, content)
    with pytest.raises(BadInput) as error:
        from workbench.evals.api import load_task_data

        load_task_data(task, tmp_path / "data", limit=0)
    assert f"{path}:{line}:" in str(error.value) and message in str(error.value)


def test_missing_eval_data_and_unknown_tasks(tmp_path):
    from workbench.evals.api import load_task_data

    with pytest.raises(BadInput, match="eval file not found"):
        load_task_data("gsm8k", tmp_path, limit=0)
    with pytest.raises(BadInput, match="MMLU folder not found"):
        load_task_data("mmlu", tmp_path, limit=0)
    with pytest.raises(BadInput, match="did you mean 'hellaswag'"):
        common.parse_tasks("bpb,helaswag")
    assert common.parse_tasks("all") == list(common.TASKS)
    assert common.parse_tasks(["gsm8k", "bpb", "gsm8k"]) == ["gsm8k", "bpb"]


# ---------------------------------------------------------------------------------------------
# the real shared files (when this checkout sits beside them): every record loads


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not beside this checkout")
def test_real_eval_files_load_whole():
    counts = {task: len(__import__("workbench.evals.api", fromlist=["x"]).load_task_data(task, SHARED, 0))
              for task in ("arc-easy", "arc-challenge", "mmlu", "hellaswag", "gsm8k", "humaneval")}
    assert counts == {"arc-easy": 2376, "arc-challenge": 1172, "mmlu": 14079, "hellaswag": 10042,
                      "gsm8k": 1319, "humaneval": 164}
    mmlu = mmlu_task.load(SHARED / "mmlu" / "test")
    assert len({item.subject for item in multiple_choice.select(mmlu, 57)}) == 57


def test_fixture_files_are_the_real_first_records():
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    for task in ("arc-easy", "hellaswag", "gsm8k", "humaneval"):
        ours = fixture_path(task).read_text(encoding="utf-8").splitlines()
        real = (SHARED / common.TASKS[task][0]).read_text(encoding="utf-8").splitlines()[: len(ours)]
        assert ours == real
    assert json.loads(fixture_path("gsm8k").read_text().splitlines()[0])["answer"].endswith("#### 18")


def test_long_prompts_leave_room_to_answer():
    from workbench.evals.generation import fit_prompt

    prompt = list(range(100))
    assert fit_prompt(prompt, None, 50) == prompt  # a model without a fixed window
    assert fit_prompt(prompt[:10], 64, 16) == prompt[:10]
    fitted = fit_prompt(prompt, 64, 16)
    assert len(fitted) == 48 and fitted[0] == 0 and fitted[-1] == 99 and fitted[1] == 53
    assert len(fit_prompt(prompt, 64, 500)) == 32  # never more than half the window for the answer
