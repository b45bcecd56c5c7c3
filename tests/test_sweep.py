"""`picochat sweep`: grid expansion, naming, where each point's data and tokenizer live, bad --set
keys (exit 2 with the validator's did-you-mean), skipping finished points, a real two-point sweep
that resumes an unfinished point, and the TUI's grouping and overlay of a sweep's runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from textual.widgets import DataTable

from workbench import cli, runs, sweep
from workbench.errors import BadInput
from workbench.tui.app import PicochatApp
from workbench.tui.widgets.plot import MetricPlot

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "runs" / "tiny-done"


def write_base(folder: Path, corpus: Path, **sections: dict) -> Path:
    """A tiny base config (no [data] dir, no [tokenizer] path: the sweep places them)."""
    config = {
        "run": {"name": "base", "out_dir": str(folder / "runs" / "base"), "device": "cpu"},
        "data": {"sources": [str(corpus)], "val_fraction": 0.1, "row_group_rows": 64},
        "tokenizer": {"vocab_size": 512},
        "model": {"depth": 1, "width": 64, "seq_len": 64, "window_pattern": "L"},
        "train": {"total_batch_tokens": 512, "device_batch_size": 8, "steps": 4, "eval_every": 2,
                  "eval_tokens": 1024, "save_every": 2, "sample_every": 0, "keep_last": 0, "compile": "off"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "base.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


@pytest.fixture
def base(tmp_path, tiny_root) -> Path:
    return write_base(tmp_path, tiny_root / "corpus.txt")


def plan_of(config: Path, *settings: str, fixed: dict | None = None, **kwargs) -> sweep.Sweep:
    axes = dict(sweep.parse_set(text) for text in settings)
    return sweep.plan(config, axes, fixed, **kwargs)


def sweep_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["sweep", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- the grid and its names ----


def test_grid_is_every_combination_with_typed_values_and_names_after_them(base):
    plan = plan_of(base, "train.matrix_lr=0.01,0.02,0.04", "model.depth=1,2", fixed={"train.steps": 6})
    assert [point.label for point in plan.points] == [
        "matrix_lr0.01-depth1", "matrix_lr0.01-depth2", "matrix_lr0.02-depth1",
        "matrix_lr0.02-depth2", "matrix_lr0.04-depth1", "matrix_lr0.04-depth2"]
    assert plan.dir == base.parent / "runs" / "base-sweep"
    point = plan.points[3]
    assert point.run_dir == base.parent / "runs" / "base-sweep-matrix_lr0.02-depth2"  # a sibling run folder
    assert point.config.run.name == "base-sweep-matrix_lr0.02-depth2"
    assert point.config.train.matrix_lr == 0.02 and point.config.model.depth == 2
    assert point.config.train.steps == 6  # one value: every point, and not in the names
    # values are typed as in TOML: an integer for a float key is a float, a string key stays text
    assert sweep.parse_set("train.matrix_lr=1,2e-2") == ("train.matrix_lr", [1.0, 0.02])
    assert sweep.parse_set("train.time_budget=90s,5m") == ("train.time_budget", ["90s", "5m"])
    assert sweep.parse_set("data.dedup=true,false") == ("data.dedup", [True, False])


def test_listed_points_cross_the_grid_and_names_qualify_keys_two_sections_share(base, tmp_path):
    points_file = tmp_path / "points.toml"
    points_file.write_text("[[point]]\nmodel.depth = 1\ntrain.steps = 5\n\n[[point]]\nmodel.depth = 2\nsft.steps = 7\n")
    listed = sweep.load_points(points_file)
    assert listed == [{"model.depth": 1, "train.steps": 5}, {"model.depth": 2, "sft.steps": 7}]
    plan = plan_of(base, "train.matrix_lr=0.01,0.02", listed=listed)
    assert [point.label for point in plan.points] == [
        "depth1-train.steps5-matrix_lr0.01", "depth1-train.steps5-matrix_lr0.02",
        "depth2-sft.steps7-matrix_lr0.01", "depth2-sft.steps7-matrix_lr0.02"]
    assert plan.points[2].config.sft.steps == 7 and plan.points[2].config.train.steps == 4
    assert sweep.value_text(1e-5) == "1e-05" and sweep.value_text("a b/c") == "a_b_c"


def test_points_share_data_and_tokenizer_until_their_settings_change_them(base, tmp_path, tiny_root):
    plan = plan_of(base, "tokenizer.vocab_size=384,512", "train.matrix_lr=0.01,0.02")
    data_dirs = {point.config.data_dir for point in plan.points}
    assert data_dirs == {plan.dir / "data"}  # prepared once for every point
    tokenizers = {point.label: point.config.tokenizer_path for point in plan.points}
    assert tokenizers["vocab_size384-matrix_lr0.01"] == tokenizers["vocab_size384-matrix_lr0.02"] \
        == plan.dir / "tokenizer-vocab_size384.json"
    assert tokenizers["vocab_size512-matrix_lr0.02"] == plan.dir / "tokenizer-vocab_size512.json"

    plan = plan_of(base, "data.val_fraction=0.1,0.2")  # new data, so a new tokenizer too
    assert [point.config.data_dir.name for point in plan.points] == ["data-val_fraction0.1", "data-val_fraction0.2"]
    assert [point.config.tokenizer_path.name for point in plan.points] == [
        "tokenizer-val_fraction0.1.json", "tokenizer-val_fraction0.2.json"]

    # a base config that names its data and tokenizer keeps them where nothing changes them
    named = write_base(tmp_path / "named", tiny_root / "corpus.txt",
                       data={"dir": str(tmp_path / "mine")}, tokenizer={"path": str(tmp_path / "mine.json")})
    plan = plan_of(named, "train.matrix_lr=0.01,0.02")
    assert {point.config.data_dir for point in plan.points} == {tmp_path / "mine"}
    assert {point.config.tokenizer_path for point in plan.points} == {tmp_path / "mine.json"}
    plan = plan_of(named, "tokenizer.vocab_size=384,512")
    assert {point.config.data_dir for point in plan.points} == {tmp_path / "mine"}
    assert plan.points[0].config.tokenizer_path == plan.dir / "tokenizer-vocab_size384.json"


# ---- bad input ----


@pytest.mark.parametrize(("setting", "expected"), [
    ("train.matrx_lr=0.01,0.02", "--set train.matrx_lr: [train] unknown key 'matrx_lr' (did you mean 'matrix_lr'?)"),
    ("trian.steps=1,2", "--set trian.steps: unknown section [trian] (did you mean 'train'?)"),
    ("model.depth=0,2", "--set model.depth: [model] depth: must be >= 1, got 0"),
    ("train.steps=ten,20", "--set train.steps: [train] steps: must be an integer, got 'ten'"),
    ("train.dtype=float32,fp8", "--set train.dtype: [train] dtype: must be one of auto, float32, bfloat16, got 'fp8'"),
    ("model.seq_len=100,128", "with seq_len100: [train] total_batch_tokens: 512 must be a multiple of"),
    ("run.name=a,b", "--set run.name: run.name is set by the sweep itself"),
    ("train.steps=4,4", "--set train.steps: value 4 given twice"),
    ("steps=1,2", "use SECTION.KEY=VALUE"),
    ("train.steps=1,", "empty value"),
])
def test_bad_settings_exit_2_with_one_line(base, capsys, setting, expected):
    code, out, err = sweep_cli(capsys, base, "--set", setting, "--dry-run")
    assert code == 2 and out == ""
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (base.parent / "runs").exists()  # nothing started, nothing written


def test_bad_budget_points_file_and_parallel_exit_2(base, tmp_path, capsys):
    code, _, err = sweep_cli(capsys, base, "--set", "train.steps=2,4", "--budget", "5x", "--dry-run")
    assert code == 2 and "--budget: [train] time_budget: use a duration" in err
    points_file = tmp_path / "points.toml"
    points_file.write_text("[[point]]\nmodel.depth = 1\n\n[[point]]\ntrain.stepz = 3\n")
    code, _, err = sweep_cli(capsys, base, "--points", points_file, "--dry-run")
    assert code == 2 and f"{points_file}: point 2: [train] unknown key 'stepz' (did you mean 'steps'?)" in err
    code, _, err = sweep_cli(capsys, base, "--set", "train.steps=2,4", "--parallel", "0")
    assert code == 2 and "--parallel 0" in err
    code, _, err = sweep_cli(capsys, base, "--dry-run")
    assert code == 2 and "nothing to sweep" in err


def test_budget_sets_every_points_time_budget(base, capsys):
    code, out, _ = sweep_cli(capsys, base, "--set", "train.matrix_lr=0.01,0.02", "--budget", "5m", "--dry-run")
    assert code == 0 and "base-sweep-matrix_lr0.01" in out and "tokenizer.json" in out
    plan = plan_of(base, "train.matrix_lr=0.01,0.02", fixed={"train.time_budget": "5m"})
    assert {point.config.train.time_budget for point in plan.points} == {"5m"}


# ---- re-running: finished points are skipped ----


def finish_point(point: sweep.Point, val_bpb: float, steps: int = 4, total: int = 4) -> None:
    """A run folder as a finished (or, with steps < total, stopped) pretraining leaves it."""
    runs.freeze_config(point.run_dir, point.config.frozen().to_toml())
    checkpoint = point.run_dir / "checkpoints" / f"step_{steps:06d}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "meta.json").write_text(json.dumps(
        {"step": steps, "total_steps": total, "tokens": steps * 512, "val_bpb": val_bpb, "best_val_bpb": val_bpb}))


def test_a_rerun_skips_finished_points_and_ranks_them_best_first(base):
    plan = plan_of(base, "train.matrix_lr=0.01,0.02,0.04")
    for point, bpb in zip(plan.points, (3.5, 3.1, 3.3), strict=True):
        finish_point(point, bpb)
    said: list[str] = []
    results = sweep.run_sweep(plan, say=said.append, poll_seconds=0.01)
    assert said == ["sweep: 3 of 3 points already finished: skipped"]  # nothing started
    assert not any((point.run_dir / "train.log").exists() for point in plan.points)
    assert [(r.label, r.val_bpb, r.state) for r in results] == [
        ("matrix_lr0.02", 3.1, "done"), ("matrix_lr0.04", 3.3, "done"), ("matrix_lr0.01", 3.5, "done")]
    saved = json.loads((plan.dir / "sweep.json").read_text())
    assert saved["state"] == "done" and saved["driver"] is None
    assert [p["name"] for p in saved["points"]] == [r.name for r in results]
    table = (plan.dir / "sweep.md").read_text()
    assert table.index("base-sweep-matrix_lr0.02 | 0.02 | 3.1000") < table.index("base-sweep-matrix_lr0.01 | 0.01")


def test_point_states_read_from_the_run_folder(base):
    plan = plan_of(base, "train.matrix_lr=0.01,0.02,0.04")
    finish_point(plan.points[0], 3.0, steps=2, total=4)  # stopped half-way
    failed = runs.RunWriter(plan.points[1].run_dir, "pretrain", total_steps=4)
    failed.finish("failed", "loss is nan at step 3")
    states = [sweep.read_point(point) for point in plan.points]
    assert [state.state for state in states] == ["unfinished", "failed", "pending"]
    assert states[1].message == "loss is nan at step 3" and states[0].val_bpb is None


def test_a_point_run_with_other_settings_is_refused(base):
    plan = plan_of(base, "train.matrix_lr=0.01,0.02")
    finish_point(plan.points[0], 3.0)
    edited = plan_of(base, "train.matrix_lr=0.01,0.02", fixed={"train.steps": 8})  # the base changed since
    with pytest.raises(BadInput, match=r"other settings \(train.steps differ\)"):
        sweep.run_sweep(edited, say=lambda line: None)


def test_a_second_driver_is_refused(base):
    plan = plan_of(base, "train.matrix_lr=0.01,0.02")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        plan.dir.mkdir(parents=True)
        (plan.dir / "sweep.json").write_text(json.dumps(
            {"name": plan.name, "state": "running", "driver": {"pid": other.pid, "host": ""}, "points": []}))
        with pytest.raises(BadInput, match=f"another sweep driver is running it \\(pid {other.pid}\\)"):
            sweep.run_sweep(plan, say=lambda line: None)
    finally:
        other.kill()
        other.wait()
    assert sweep.read_sweep(plan.dir).state == "stopped"  # its driver is gone


def test_sweep_readers_never_crash_on_garbage(tmp_path, base):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "sweep.json").write_text("{not json")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "sweep.json").write_text(json.dumps(
        {"points": [1, {"name": 3}, {"name": "../../etc"}, {"name": "x", "val_bpb": "y"}], "driver": [7]}))
    found = sweep.list_sweeps(tmp_path)
    assert [info.path.name for info in found] == ["b"]
    assert found[0].run_names == ["x"] and found[0].best is None and found[0].state == "unknown"

    point = plan_of(base, "train.matrix_lr=0.01,0.02").points[0]
    checkpoint = point.run_dir / "checkpoints" / "step_000004"
    checkpoint.mkdir(parents=True)
    (checkpoint / "meta.json").write_text("[4, 4]")
    (point.run_dir / "status.json").write_text('"done"')
    (point.run_dir / "metrics.jsonl").write_text('{"kind": "sys", "stage": "pretrain", "params": "many"}\n[]\n')
    result = sweep.read_point(point)
    assert result.state == "unfinished" and result.val_bpb is None and result.params is None


# ---- a real sweep ----


@pytest.mark.slow
def test_a_real_sweep_shares_data_trains_every_point_and_resumes_an_unfinished_one(base, capsys):
    code, out, err = sweep_cli(capsys, base, "--set", "tokenizer.vocab_size=384,512")
    assert code == 0, err
    plan = plan_of(base, "tokenizer.vocab_size=384,512")
    assert out.count("sweep: preparing data") == 1 and out.count("tokenizer for") == 2
    assert sorted(path.name for path in plan.dir.iterdir()) == [
        "data", "sweep.json", "sweep.md", "tokenizer-vocab_size384.json", "tokenizer-vocab_size512.json"]
    saved = json.loads((plan.dir / "sweep.json").read_text())
    bpbs = [point["val_bpb"] for point in saved["points"]]
    assert all(point["state"] == "done" and point["tokens"] == 4 * 512 for point in saved["points"])
    assert bpbs == sorted(bpbs) and all(2.0 < bpb < 12.0 for bpb in bpbs)
    for point in plan.points:  # each point trained with its own tokenizer on the shared data
        meta = json.loads((runs.list_checkpoints(point.run_dir)[-1] / "meta.json").read_text())
        assert meta["step"] == 4
        frozen = (point.run_dir / "config.toml").read_text()
        assert str(plan.dir / "data") in frozen and str(point.config.tokenizer_path) in frozen

    # the second point loses its last checkpoint: it is resumed, the first is left alone
    first, second = plan.points
    first_metrics = (first.run_dir / "metrics.jsonl").read_bytes()
    shutil.rmtree(second.run_dir / "checkpoints" / "step_000004")
    code, out, err = sweep_cli(capsys, base, "--set", "tokenizer.vocab_size=384,512")
    assert code == 0, err
    assert "1 of 2 points already finished: skipped" in out and f"resumed {second.name}" in out
    assert "preparing data" not in out and "tokenizer for" not in out
    assert (first.run_dir / "metrics.jsonl").read_bytes() == first_metrics
    assert "resuming at step 2" in (second.run_dir / "train.log").read_text()

    code, out, _ = sweep_cli(capsys, base, "--set", "tokenizer.vocab_size=384,512")
    assert code == 0 and "2 of 2 points already finished: skipped" in out and "started" not in out


# ---- the TUI: a sweep's runs grouped under it, and overlaid on the dashboard with one key ----


def recorded_sweep(tmp_path: Path) -> Path:
    """A runs folder with a three-point sweep (points best first) and one run of its own."""
    runs_dir = tmp_path / "runs"
    for name in ("other", "lr-sweep-matrix_lr0.01", "lr-sweep-matrix_lr0.02", "lr-sweep-matrix_lr0.04"):
        shutil.copytree(FIXTURE_RUN, runs_dir / name)
    (runs_dir / "lr-sweep").mkdir()
    points = [{"name": "lr-sweep-matrix_lr0.02", "label": "matrix_lr0.02", "state": "done", "val_bpb": 2.5},
              {"name": "lr-sweep-matrix_lr0.01", "label": "matrix_lr0.01", "state": "done", "val_bpb": 2.7},
              {"name": "lr-sweep-matrix_lr0.04", "label": "matrix_lr0.04", "state": "running", "val_bpb": None}]
    (runs_dir / "lr-sweep" / "sweep.json").write_text(json.dumps(
        {"name": "lr-sweep", "state": "done", "driver": None, "points": points}))
    return runs_dir


def test_picochat_runs_groups_a_sweep_as_the_runs_screen_does(tmp_path, capsys):
    runs_dir = recorded_sweep(tmp_path)
    (tmp_path / "runs" / "next-sweep").mkdir()  # planned, no run folder yet: listed first
    (tmp_path / "runs" / "next-sweep" / "sweep.json").write_text(json.dumps(
        {"name": "next-sweep", "state": "running", "points": [{"name": "next-sweep-depth2"}]}))
    assert cli.main(["runs", str(runs_dir)]) == 0
    lines = [line.rstrip() for line in capsys.readouterr().out.splitlines()[1:]]
    names = [line.split()[0] if not line.startswith("   ") else "  " + line.split()[0] for line in lines]
    assert names[0] == "next-sweep" and lines[0].split()[1:4] == ["stopped", "sweep", "0/1"]
    header = names.index("lr-sweep")
    assert names[header + 1:header + 4] == ["  lr-sweep-matrix_lr0.02", "  lr-sweep-matrix_lr0.01",
                                            "  lr-sweep-matrix_lr0.04"]
    assert lines[header].split()[1:4] == ["done", "sweep", "2/3"]
    assert sorted(names) == sorted(["next-sweep", "lr-sweep", "other", "  lr-sweep-matrix_lr0.02",
                                    "  lr-sweep-matrix_lr0.01", "  lr-sweep-matrix_lr0.04"])


async def test_runs_screen_groups_a_sweep_and_o_overlays_its_runs(tmp_path):
    runs_dir = recorded_sweep(tmp_path)
    app = PicochatApp(runs_dir)
    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        rows = [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]
        names = [row[0] for row in rows]
        header = names.index("lr-sweep")
        assert names[header + 1:header + 4] == ["  lr-sweep-matrix_lr0.02", "  lr-sweep-matrix_lr0.01",
                                                "  lr-sweep-matrix_lr0.04"]
        assert rows[header][2] == "sweep" and rows[header][3] == "2/3"
        assert "best val bpb 2.5000: matrix_lr0.02" in rows[header][7]
        table.move_cursor(row=names.index("  lr-sweep-matrix_lr0.04"))  # any run of the sweep will do
        await pilot.press("o")
        await pilot.pause()
        assert app.current_mode == "dashboard"
        dashboard = app.screen
        assert dashboard.run_dir == runs_dir / "lr-sweep-matrix_lr0.02"  # the best run, the others overlaid
        assert [path.name for path in dashboard.overlay] == ["lr-sweep-matrix_lr0.01", "lr-sweep-matrix_lr0.04"]
        loss = dashboard.query_one("#plot-loss", MetricPlot)
        assert {line.label for line in loss.lines[1:]} == {
            "lr-sweep-matrix_lr0.02", "lr-sweep-matrix_lr0.01", "lr-sweep-matrix_lr0.04"}
        await pilot.press("1")
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        table.move_cursor(row=names.index("other"))
        await pilot.press("o")  # not a sweep's run: says so, stays
        await pilot.pause()
        assert app.current_mode == "runs"
