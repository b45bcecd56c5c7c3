"""The stage registry: one answer to "is it done?" and "what is next?" for speedrun and the TUI's
launcher (the TUI used to call a pretraining stopped part-way done and suggest sft, where speedrun
resumed it), and one place for the stages' run folders."""

import json
import os
from pathlib import Path

import pytest

from workbench import runs, speedrun, stages
from workbench.evals.common import parse_tasks
from workbench.evals.report import base_run_dir, stage_folders
from workbench.tui.launch import running_stage, suggested_stage

STEPS = {"pretrain": 40, "sft": 20, "grpo": 4}  # the tiny test config's


def _checkpoint(run_dir: Path, step: int, evals: dict | None = None) -> Path:
    folder = run_dir / "checkpoints" / f"step_{step:06d}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "meta.json").write_text(json.dumps({"step": step}))
    if evals is not None:
        (folder / "evals.json").write_text(json.dumps(evals))
    return folder


def _evals(cfg, limit: int) -> dict:
    return {task: {"accuracy": 0.5, "limit": limit} for task in parse_tasks(cfg.eval.tasks)}


# Each row: what the run folders hold -> each stage's state, and the stage the run needs next.
# "pretrain:20" is a checkpoint at step 20 (of 40); "evals" gives every trained stage's newest
# checkpoint the config's [eval] tasks at its limit, "evals-other-limit" at another limit.
ROWS = [
    ((), "new new new new new new", "prepare"),
    (("data",), "done new new new new new", "tokenizer"),
    (("data", "tokenizer"), "done done new new new new", "pretrain"),
    (("data", "tokenizer", "pretrain:20"), "done done partial new new new", "pretrain"),
    (("data", "tokenizer", "pretrain:40"), "done done done new new new", "sft"),
    (("data", "tokenizer", "pretrain:40", "sft:10"), "done done done partial new new", "sft"),
    (("data", "tokenizer", "pretrain:40", "sft:20"), "done done done done new new", "grpo"),
    (("data", "tokenizer", "pretrain:40", "sft:20", "grpo:2"), "done done done done partial new", "grpo"),
    (("data", "tokenizer", "pretrain:40", "sft:20", "grpo:4"), "done done done done done new", "eval"),
    (("data", "tokenizer", "pretrain:40", "sft:20", "grpo:4", "evals-other-limit"),
     "done done done done done new", "eval"),
    (("data", "tokenizer", "pretrain:40", "sft:20", "grpo:4", "evals"), "done done done done done done", None),
    (("tokenizer", "pretrain:40"), "new done done new new new", "prepare"),  # data deleted: prepare again
]


def _lay_out(cfg, held: tuple[str, ...]) -> None:
    for item in held:
        if item == "data":
            cfg.data_dir.mkdir(parents=True, exist_ok=True)
            (cfg.data_dir / "manifest.json").write_text("{}")
        elif item == "tokenizer":
            cfg.tokenizer_path.parent.mkdir(parents=True, exist_ok=True)
            cfg.tokenizer_path.write_text("{}")
        elif item.startswith("evals"):
            limit = cfg.eval.limit if item == "evals" else cfg.eval.limit + 1
            for stage in stages.TRAINING_STAGES:
                newest = runs.list_checkpoints(stages.run_dir(cfg, stage))[-1]
                (newest / "evals.json").write_text(json.dumps(_evals(cfg, limit)))
        else:
            stage, step = item.split(":")
            _checkpoint(stages.run_dir(cfg, stage), int(step))


@pytest.mark.parametrize("held, expected_states, expected_next", ROWS)
def test_done_and_next_agree_for_speedrun_and_the_tui(make_tiny_config, held, expected_states, expected_next):
    cfg = make_tiny_config(data={"dir": ""}, tokenizer={"path": ""})  # data and tokenizer in the run folder
    assert {stage: stages.total_steps(cfg, stage) for stage in stages.TRAINING_STAGES} == STEPS
    _lay_out(cfg, held)

    states = [stages.state(cfg, stage) for stage in stages.WORKER_STAGES]
    assert " ".join(states) == expected_states
    assert stages.next_stage(cfg) == expected_next
    # the TUI's launcher: the next stage, or eval when all is done
    assert suggested_stage(cfg) == (expected_next or "eval")
    # speedrun: a done training stage is skipped, a partial one resumed, a new one trained afresh
    for stage, state in zip(stages.WORKER_STAGES, states, strict=False):
        if stage not in stages.TRAINING_STAGES:
            continue
        calls: list[bool] = []

        def train(cfg, resume, verbose, calls=calls):  # what speedrun asks of the stage's trainer
            calls.append(resume)
            return {}

        result = speedrun._training_stage(cfg, stage, train, verbose=False)
        assert (result.status, calls) == {"done": ("skipped", []), "partial": ("resumed", [True]),
                                          "new": ("ran", [False])}[state], stage


def test_a_speedrun_of_a_finished_run_skips_every_stage(make_tiny_config, capsys):
    cfg = make_tiny_config(data={"dir": ""}, tokenizer={"path": ""})
    _lay_out(cfg, ROWS[-2][0])
    report, results = speedrun.speedrun(cfg, verbose=False)
    assert [(r.name, r.status) for r in results[:-2]] == [
        ("prepare", "skipped"), ("tokenizer", "skipped"), ("pretrain", "skipped"), ("sft", "skipped"),
        ("grpo", "skipped"), ("eval/pretrain", "skipped"), ("eval/sft", "skipped"), ("eval/grpo", "skipped")]
    assert report == cfg.out_dir / "report.md" and stages.state(cfg, "report") == "done"


def test_until_leaves_later_training_stages_out(make_tiny_config):
    cfg = make_tiny_config()
    _checkpoint(cfg.out_dir, STEPS["pretrain"], _evals(cfg, cfg.eval.limit))
    assert stages.next_stage(cfg, until="pretrain") is None
    assert stages.state(cfg, "eval", until="pretrain") == "done"
    assert stages.next_stage(cfg) == "sft"


def test_a_running_eval_is_the_running_stage(make_tiny_config):
    # an eval writes its status to RUN-eval: the launcher looked for it in RUN, so the Config
    # screen offered the next stage while an eval was running
    cfg = make_tiny_config()
    _checkpoint(cfg.out_dir, STEPS["pretrain"])
    assert running_stage(cfg) is None and suggested_stage(cfg) == "sft"
    writer = runs.RunWriter(stages.run_dir(cfg, "eval"), "eval")
    writer.write_status(state="running", pid=os.getpid())
    assert running_stage(cfg) == "eval" and suggested_stage(cfg) == "eval"
    writer.finish("done", "")
    assert running_stage(cfg) is None


def test_a_time_budget_run_is_done_at_the_steps_it_fixed(make_tiny_config):
    cfg = make_tiny_config(train={"time_budget": "30s"})
    folder = _checkpoint(cfg.out_dir, 12)
    assert stages.state(cfg, "pretrain") == "partial"  # still measuring: the config's 40 steps
    (folder / "meta.json").write_text(json.dumps({"step": 12, "time_budget": 30.0, "total_steps": 12}))
    assert stages.state(cfg, "pretrain") == "done" and stages.next_stage(cfg) == "sft"


def test_stage_folders(tmp_path):
    base = tmp_path / "tiny"
    assert [stages.folder(base, stage).name for stage in stages.STAGES] == [
        "tiny", "tiny", "tiny", "tiny-sft", "tiny-grpo", "tiny-eval", "tiny"]
    for stage in ("sft", "grpo", "eval"):
        assert stages.split_folder(stages.folder(base, stage)) == (base, stage)
    assert stages.split_folder(base) == (base, "") and stages.split_folder(tmp_path / "-eval")[1] == ""
    # an eval of a run's checkpoint (or its INT8 copy) writes beside that run; of a loose folder, nowhere
    sft_checkpoint = _checkpoint(stages.folder(base, "sft"), 3)
    assert stages.eval_dir(sft_checkpoint) == tmp_path / "tiny-sft-eval"
    assert stages.eval_dir(base / "int8" / "step_000003") == tmp_path / "tiny-eval"
    assert stages.eval_dir(tmp_path / "exported") is None
    # the report finds the run from any of its folders, and every folder of it
    for stage in ("sft", "eval"):
        stages.folder(base, stage).mkdir(exist_ok=True)
    base.mkdir()
    assert base_run_dir(tmp_path / "tiny-eval") == base
    assert stage_folders(base) == {"": base, "sft": tmp_path / "tiny-sft", "eval": tmp_path / "tiny-eval"}
