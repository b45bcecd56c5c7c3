"""The 21 defects a walk through the workbench found (issue 13), one test each (numbered as in the
issue), plus the keys people expect and the first-run welcome. Each drives the real app with
Textual's Pilot over real run folders (or the real CLI), and failed before its fix."""

from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import DataTable, Label, OptionList, Static, TextArea
from tui_helpers import until

from workbench import config as config_module
from workbench import runs
from workbench.tui.app import PicochatApp
from workbench.tui.widgets.dialogs import ConfirmDialog
from workbench.tui.widgets.plot import MetricPlot

SIZE = (140, 44)


def text_of(widget) -> str:
    return str(widget.render())


def notes(app) -> list:
    return list(app._notifications)


def rows_of(table: DataTable) -> list[list[str]]:
    return [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]


def int8_copy(runs_dir: Path, evals: dict | None = None) -> Path:
    source = runs_dir / "tiny-done" / "checkpoints" / "step_000300"
    copy = runs_dir / "tiny-done" / "int8" / "step_000300"
    shutil.copytree(source, copy)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "quantization": "int8"}))
    (copy / "evals.json").write_text(json.dumps(evals or {"bpb": {"bpb": 2.61}}))
    return copy


# 1 ---------------------------------------------------------------------------------------------


async def test_1_evals_show_the_results_of_an_int8_copy_by_its_name(runs_dir):
    copy = int8_copy(runs_dir)
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        app.open_eval(copy)
        await pilot.pause()
        rows = rows_of(app.screen.query_one("#eval-results", DataTable))
        assert ["int8/step_000300", "-", "2.6100", "-"] in rows
        assert "tiny-done/int8/step_000300" in text_of(app.screen.query_one("#eval-status", Static))
        await pilot.press("f7")
        await pilot.pause()
        picker = app.screen.query_one("#chat-checkpoint")
        assert "tiny-done/int8/step_000300" in [str(prompt) for prompt, _ in picker._options]


# 2 ---------------------------------------------------------------------------------------------


async def test_2_number_keys_switch_screens_from_config_and_quit_asks_about_unsaved_changes(runs_dir):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await pilot.pause()
        editor = app.screen.query_one(TextArea)
        before = editor.text
        await pilot.press("3")
        await pilot.pause()
        assert app.current_mode == "data" and editor.text == before  # nothing typed into line 1
        await pilot.press("2", "e", "x")  # e edits: now keys type
        await pilot.pause()
        assert editor.text != before
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog) and "unsaved changes" in app.screen.question
        await pilot.press("n")
        await pilot.pause()
        assert app.is_running


# 3 ---------------------------------------------------------------------------------------------


async def test_3_the_config_editor_highlights_toml(runs_dir):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await pilot.pause()
        editor = app.screen.query_one(TextArea)
        assert editor.language == "toml" and editor.is_syntax_aware


# 4, 5 ------------------------------------------------------------------------------------------


async def test_4_5_a_new_run_gets_a_name_of_its_own_in_the_users_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty folder, not the checkout
    app = PicochatApp(tmp_path / "runs")
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(2):
            await pilot.press("1", "n")
            await pilot.pause()
        first = config_module.load(tmp_path / "configs" / "new.toml")
        second = config_module.load(tmp_path / "configs" / "new-2.toml")
        assert (first.run.name, second.run.name) == ("new", "new-2")
        assert first.out_dir == tmp_path / "runs" / "new" and second.out_dir == tmp_path / "runs" / "new-2"
        assert all(first.resolve_path(source).is_file() for source in first.data.sources)  # bundled data found
        assert not list((config_module.REPO_DIR / "configs").glob("new*.toml"))  # nothing into the checkout
        # escape in the launch dialog saves nothing
        editor = app.screen.query_one(TextArea)
        editor.load_text(editor.text.replace("steps = 300", "steps = 301"))
        await pilot.press("ctrl+l")
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert "steps = 300" in (tmp_path / "configs" / "new-2.toml").read_text()
        # the refusal for a run that has checkpoints: whole, and long enough to read
        (second.out_dir / "checkpoints" / "step_000010").mkdir(parents=True)
        (second.out_dir / "checkpoints" / "step_000010" / "meta.json").write_text('{"step": 10}')
        (second.data_dir).mkdir(parents=True, exist_ok=True)
        await pilot.press("ctrl+l", "p")
        await pilot.pause()
        refusal = [note for note in notes(app) if "already has checkpoints" in note.message][-1]
        assert "give [run] name another value" in refusal.message and not refusal.markup
        assert refusal.timeout >= 10
    ignored = [line.strip() for line in (config_module.REPO_DIR / ".gitignore").read_text().splitlines()]
    assert any(fnmatch.fnmatch("configs/new-2.toml", pattern.lstrip("/")) for pattern in ignored)


# 6 ---------------------------------------------------------------------------------------------


async def test_6_launch_says_what_is_running_instead_of_suggesting_the_next_stage(make_tiny_config, monkeypatch):
    cfg = make_tiny_config()
    config_path = cfg.base_dir / "config.toml"
    monkeypatch.chdir(cfg.base_dir)
    writer = runs.RunWriter(cfg.out_dir, "pretrain", total_steps=40)  # a live pretraining worker (us)
    writer.write_status(state="running")
    (cfg.out_dir / "checkpoints" / "step_000020").mkdir(parents=True)
    (cfg.out_dir / "checkpoints" / "step_000020" / "meta.json").write_text('{"step": 20, "stage": "pretrain"}')
    app = PicochatApp(cfg.out_dir.parent)
    async with app.run_test(size=SIZE) as pilot:
        app.open_config(config_path)
        await pilot.pause()
        assert "pretrain is running" in text_of(app.screen.query_one("#config-next", Static))
        await pilot.press("ctrl+l")
        await pilot.pause()
        options = app.screen.query_one(OptionList)
        labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert not any("<- next" in label for label in labels)
        assert any(label.startswith("p  pretrain") and "<- running" in label for label in labels)
    writer.finish("stopped")


# 7 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(180, 50), (80, 24)])
async def test_7_the_stop_question_is_shown_whole(runs_dir, size):
    writer = runs.RunWriter(runs_dir / "live", "pretrain", total_steps=100)
    writer.write_status(state="running")
    app = PicochatApp(runs_dir)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        table.move_cursor(row=[row[0] for row in rows_of(table)].index("live"))
        await pilot.press("s")
        await pilot.pause()
        label = app.screen.query_one(Label)
        box = label.parent
        assert label.outer_size.width <= box.content_size.width
        lines = label.render_lines(label.region.reset_offset)  # what is drawn, line by line
        drawn = " ".join("".join(segment.text for segment in line).strip() for line in lines)
        assert "r on Checkpoints continues it later." in drawn
    writer.finish("stopped")


# 8 ---------------------------------------------------------------------------------------------


async def test_8_a_stopped_run_is_stopped_not_done(runs_dir, capsys):
    writer = runs.RunWriter(runs_dir / "halted", "pretrain", total_steps=100)
    writer.heartbeat(40)
    writer.finish("stopped", "stopped at step 40; continue with --resume")
    assert runs.effective_state(runs.read_status(writer.dir)) == "stopped"
    from workbench.cli import main

    assert main(["runs", str(runs_dir)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "halted" in line)
    assert "stopped" in line and "done" not in line
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        rows = {row[0]: row for row in rows_of(app.screen.query_one(DataTable))}
        assert rows["halted"][1] == "stopped"


# 9 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (60, 15)])
async def test_9_small_terminals_get_fewer_taller_plots_and_nothing_cut(runs_dir, size):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        if size[0] >= 80:
            assert table.virtual_size.width <= table.size.width  # no hidden columns, no scroll bar
        app.open_run(runs_dir / "tiny-done")
        await pilot.pause()
        shown = [plot for plot in app.screen.query(MetricPlot) if plot.display]
        assert shown and all(plot.size.height >= 8 and plot.size.width >= 30 for plot in shown)
        pages = {tuple(plot.id for plot in shown)}
        for _ in range(6):
            await pilot.press("right")
            pages.add(tuple(plot.id for plot in app.screen.query(MetricPlot) if plot.display))
        assert {plot for page in pages for plot in page} >= {"plot-loss", "plot-val_bpb", "plot-lr_multiplier",
                                                              "plot-tokens_per_second", "plot-mfu", "plot-grad_norm"}
        assert not app.screen.query_one("Footer").show_command_palette  # no stray palette key at the end


# 10 --------------------------------------------------------------------------------------------


async def test_10_sft_and_grpo_runs_get_their_own_panels(runs_dir):
    grpo = runs.RunWriter(runs_dir / "rl", "grpo", total_steps=10)
    for step in range(1, 6):
        grpo.log("grpo", step, reward_mean=0.1 * step, reward_std=0.05, accuracy=0.1 * step,
                 zero_variance_fraction=0.5, completion_length=40.0 + step)
        grpo.log("train", step, loss=0.5, lr=0.001, lr_multiplier=1.0)
    grpo.finish("done")
    app = PicochatApp(runs_dir)
    async with app.run_test(size=(200, 50)) as pilot:
        app.open_run(runs_dir / "d4-failed")  # an SFT run
        await pilot.pause()
        shown = {plot.id for plot in app.screen.query(MetricPlot) if plot.display}
        assert {"plot-end_rate", "plot-sft_accuracy"} <= shown and "plot-mfu" not in shown
        app.open_run(runs_dir / "rl")
        await pilot.pause()
        shown = {plot.id for plot in app.screen.query(MetricPlot) if plot.display}
        assert {"plot-reward_mean", "plot-grpo_accuracy", "plot-zero_variance_fraction",
                "plot-completion_length"} <= shown and "plot-val_bpb" not in shown
        reward = app.screen.query_one("#plot-reward_mean", MetricPlot)
        assert reward.lines[-1].ys == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
        assert any(line.label == "± std" for line in reward.lines)


# 11, 12, 13 ------------------------------------------------------------------------------------


async def test_11_12_13_one_colour_per_run_the_lr_multiplier_and_human_shared_axes(runs_dir):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=(200, 50)) as pilot:
        app.open_run(runs_dir / "tiny-done", overlay=[runs_dir / "wide-crashed"])
        await pilot.pause()
        plots = [plot for plot in app.screen.query(MetricPlot) if plot.display]
        colours = {}
        for plot in plots:
            for line in plot.lines:
                if line.label in ("tiny-done", "wide-crashed"):
                    colours.setdefault(line.label, set()).add(line.color)
        assert colours["tiny-done"] == {"cyan"} and colours["wide-crashed"] == {"orange"}  # 11
        lr = app.screen.query_one("#plot-lr_multiplier", MetricPlot)
        assert max(lr.lines[0].ys) == pytest.approx(1.0)  # 12: x base, not the absolute 0.02
        assert {plot.x_range for plot in plots} == {(1, 300)}  # 13: one x range for all
        for axis, label in (("step", r"100 .* 200 .* 300"), ("tokens", r"200k .* 400k .* 600k"),
                            ("time", r"\b\d+s .* \dm\d\ds .* 2m30s")):
            while app.screen.x_axis != axis:
                await pilot.press("x")
            await pilot.pause(0.3)
            loss = app.screen.query_one("#plot-loss", MetricPlot)
            bottom = str(loss.render()).splitlines()[-1]  # the x tick labels
            assert re.search(label, bottom), (axis, bottom)
            assert not re.search(r"\d\.\d|2048", bottom)
        headline = text_of(app.screen.query_one("#dash-headline", Static))
        assert "elapsed 2m30s" in headline and loss.x_range[1] == pytest.approx(150.0)  # time axis = elapsed


# 14 --------------------------------------------------------------------------------------------


async def test_14_an_eval_in_progress_does_not_take_over_the_dashboard(runs_dir):
    evaluating = runs.RunWriter(runs_dir / "tiny-done-eval", "eval")  # the newest heartbeat
    evaluating.write_status(state="running")
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await pilot.pause()
        assert app.screen.run_dir.name != "tiny-done-eval"
        assert app.screen.query_one("#plot-loss", MetricPlot).lines  # a training run's panels, with data
        await pilot.press("1")
        table = app.screen.query_one(DataTable)
        table.move_cursor(row=[row[0] for row in rows_of(table)].index("tiny-done-eval"))
        await pilot.press("enter")  # an eval's folder opens where its results and progress show
        await pilot.pause()
        assert app.current_mode == "evals" and app.current_run == runs_dir / "tiny-done"
    evaluating.finish("done")


# 15 --------------------------------------------------------------------------------------------


async def test_15_ticked_rows_read_differently_without_colour(runs_dir):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        app.open_eval(runs_dir / "tiny-done" / "checkpoints" / "step_000300")
        await pilot.pause()
        tasks = app.screen.query_one("#eval-tasks")
        lines = {str(tasks.get_option_at_index(i).value): "".join(s.text for s in tasks.render_line(i))
                 for i in range(tasks.option_count)}
        assert "x" in lines["bpb"].split("bpb")[0]  # ticked by the run's config
        assert "x" not in lines["mmlu"].split("mmlu")[0]
        app.open_run(runs_dir / "tiny-done", overlay=[runs_dir / "d4-failed"])
        await pilot.pause()
        await pilot.press("o")  # the overlay picker: training runs only, the overlaid one ticked
        await pilot.pause()
        items = app.screen.query_one("#items")
        lines = {str(items.get_option_at_index(i).value): "".join(s.text for s in items.render_line(i))
                 for i in range(items.option_count)}
        assert set(lines) == {"d4-failed", "wide-crashed"}
        assert "x" in lines["d4-failed"].split("d4-failed")[0]
        assert "x" not in lines["wide-crashed"].split("wide-crashed")[0]


# 16 --------------------------------------------------------------------------------------------


async def test_16_eval_progress_belongs_to_its_checkpoint(runs_dir):
    writer = runs.RunWriter(runs_dir / "tiny-done-eval", "eval")
    newest = runs_dir / "tiny-done" / "checkpoints" / "step_000300"
    writer.write_status(state="running")
    writer.event(f"eval of {newest}", checkpoint=str(newest.resolve()))
    writer.progress(40, 200, "choices of 50 questions", task="arc-easy")
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        app.open_eval(newest)
        await pilot.pause()
        status = app.screen.query_one("#eval-status", Static)
        assert "40/200 choices of 50 questions of arc-easy" in text_of(status)
        app.open_eval(runs_dir / "tiny-done" / "checkpoints" / "step_000200")
        await pilot.pause()
        assert "40/200" not in text_of(status) and "step_000200" in text_of(status)
    writer.finish("done")


def test_16_a_limited_multiple_choice_eval_counts_choices_not_examples(tiny_checkpoint, tmp_path, capsys):
    from workbench.cli import main

    run = tmp_path / "tiny-run"
    shutil.copytree(tiny_checkpoint.parent.parent, run)
    data = Path(__file__).parent / "fixtures" / "evals"
    assert main(["eval", str(run / "checkpoints" / tiny_checkpoint.name), "--tasks", "arc-easy", "--limit", "3",
                 "--data-dir", str(data), "--device", "cpu"]) == 0
    progress = [r for r in runs.read_metrics(tmp_path / "tiny-run-eval", "progress") if r.get("task") == "arc-easy"]
    assert progress[-1]["unit"] == "choices of 3 questions" and progress[-1]["done"] == progress[-1]["total"]
    assert "tiny-run/step_" in capsys.readouterr().out  # the table's title names the checkpoint


# 17 --------------------------------------------------------------------------------------------


async def test_17_checkpoints_show_measured_bpb_and_weights_apart_from_the_folder(runs_dir):
    checkpoint = runs_dir / "tiny-done" / "checkpoints" / "step_000100"
    meta = json.loads((checkpoint / "meta.json").read_text())
    del meta["val_bpb"]
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    (checkpoint / "evals.json").write_text(json.dumps({"bpb": {"bpb": 2.55}}))
    (checkpoint / "model.safetensors").write_bytes(b"w" * 3000)
    (checkpoint / "optimizer.safetensors").write_bytes(b"o" * 6000)
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        headers = [str(column.label) for column in table.columns.values()]
        row = dict(zip(headers, next(r for r in rows_of(table) if r[0:2] == ["tiny-done", "step_000100"]),
                       strict=True))
        assert row["val bpb"] == "2.5500"
        assert row["weights"] == "2.9 kB" and row["disk"].endswith("kB") and row["disk"] != row["weights"]


# 18 --------------------------------------------------------------------------------------------


async def test_18_the_data_screen_shows_one_chars_per_token(tmp_path, make_tiny_config):
    cfg = make_tiny_config()
    writer = runs.RunWriter(cfg.out_dir, "tokenizer")
    writer.log("tokenizer", vocab_size=512, chars_per_token=3.14, measured_on="val")
    writer.finish("done", "vocab 512, 3.14 chars/token")
    app = PicochatApp(tmp_path / "runs")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await pilot.pause()
        app.screen.load_config(cfg.base_dir / "config.toml")
        result = app.screen.query_one("#data-result", Static)
        assert await until(pilot, lambda: "chars/token" in text_of(result))
        assert "chars/token 3.14 (on the val split)" in text_of(result)
        assert "3.14 chars/token" in text_of(app.screen.query_one("#data-status", Static))


# 19 --------------------------------------------------------------------------------------------


class ScriptedEngine:
    """Events as Engine.stream_chat yields them: a calculator call, its result, then the answer."""

    model_name, num_params, device = "scripted", 1, "cpu"

    def stream_chat(self, messages, params, use_tools=True):
        from workbench.engine.engine import Event

        yield from (Event("tool_call", text="4*212"), Event("tool_output", text="848"),
                    Event("text", text="The answer is 848."), Event("done", finish_reason="stop"))


def test_19_chat_prints_its_banner_and_calculator_lines_cleanly(monkeypatch):
    from workbench.engine.chat_cli import Chat, apply_settings, describe, one_shot
    from workbench.engine.sampling import SamplingParams

    both = io.StringIO()  # stdout and stderr as one terminal shows them: in the order written
    monkeypatch.setattr(sys, "stdout", both)
    monkeypatch.setattr(sys, "stderr", both)
    one_shot(ScriptedEngine(), SamplingParams(), "4*212?", use_tools=True)
    assert both.getvalue() == "[calculator: 4*212 = 848]\nThe answer is 848.\n"
    screen = io.StringIO()
    console = Console(file=screen, width=100, highlight=False)
    Chat(ScriptedEngine(), SamplingParams(), console).answer("4*212?")
    assert "848]\nThe answer is 848." in screen.getvalue()
    with pytest.raises(ValueError, match="did you mean 'temperature'"):
        apply_settings(SamplingParams(), ["temprature=0.5"])
    # the banner's settings line: dim text, no markup printed raw
    banner = io.StringIO()
    Console(file=banner, width=200).print(describe(SamplingParams(), True), style="dim", markup=False)
    assert "[dim]" not in banner.getvalue()


@pytest.mark.slow
def test_19_the_chat_banner_has_no_raw_markup(tiny_checkpoint):
    import subprocess

    result = subprocess.run([sys.executable, "-m", "workbench", "chat", str(tiny_checkpoint), "--device", "cpu"],
                            input="/quit\n", capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "temperature=" in result.stdout and "[dim]" not in result.stdout and "[/dim]" not in result.stdout


# 20 --------------------------------------------------------------------------------------------


def test_20_report_wall_time_leaves_out_pauses_stops_and_other_evals(tmp_path):
    from workbench.evals.report import evals_of, wall_seconds

    records = [
        {"t": 0.0, "kind": "sys"}, {"t": 10.0, "kind": "train"},
        {"t": 20.0, "kind": "event", "message": "paused at step 2"}, {"t": 320.0, "kind": "event",
                                                                      "message": "resumed at step 2"},
        {"t": 330.0, "kind": "train"}, {"t": 340.0, "kind": "event", "message": "pretrain stopped: at step 3"},
        {"t": 500.0, "kind": "sys"}, {"t": 510.0, "kind": "train"},
    ]
    assert wall_seconds(records) == pytest.approx(10 + 10 + 10 + 10 + 10)
    old, new = str(tmp_path / "a"), str(tmp_path / "b")
    evals = [{"t": 0.0, "kind": "event", "checkpoint": old}, {"t": 100.0, "kind": "eval"},
             {"t": 1000.0, "kind": "event", "checkpoint": new}, {"t": 1030.0, "kind": "eval"}]
    assert wall_seconds(evals_of(evals, {new})) == pytest.approx(30)


def test_20_report_column_names_the_step_its_evals_measured(tmp_path):
    from workbench.evals.report import write_report

    run = tmp_path / "runs" / "r"
    writer = runs.RunWriter(run, "pretrain", total_steps=300)
    for step in (1, 300):
        writer.log("train", step, loss=3.0, tokens=step * 10)
    writer.finish("done")
    for step in (115, 300):
        folder = run / "checkpoints" / f"step_{step:06d}"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"step": step, "stage": "pretrain"}))
    (run / "checkpoints" / "step_000115" / "evals.json").write_text(json.dumps({"bpb": {"bpb": 2.0}}))
    data = json.loads(write_report(run).with_suffix(".json").read_text())
    assert data["table"]["header"][2] == "pretrain (step 300; evals of step 115)"


# 21 and the keys people expect -------------------------------------------------------------------


async def test_21_help_quit_escape_and_vim_keys(runs_dir):
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        listed = {(key, what) for _, key, what in app.screen.rows}
        for key, what in (("n", "New run"), ("s", "Stop"), ("/", "Filter"), ("j", "Down"), ("?", "Keys")):
            assert (key, what) in listed
        await pilot.press("escape")
        await pilot.pause()
        assert app.current_mode == "runs" and not app.screen.query(".help-box")
        table = app.screen.query_one(DataTable)
        await pilot.press("j")
        assert table.cursor_row == 1
        await pilot.press("k")
        assert table.cursor_row == 0
        await pilot.press("G")
        assert table.cursor_row == table.row_count - 1
        await pilot.press("g")
        assert table.cursor_row == 0
        await pilot.press("slash", *"wide", "enter")
        await pilot.pause()
        assert [row[0] for row in rows_of(table)] == ["wide-crashed"]
        await pilot.press("escape")
        await pilot.pause()
        assert table.row_count == 3
        app.action_show_help_panel()  # Textual's keys panel (ctrl+p, "Keys"): escape closes it too
        await pilot.pause()
        assert app.screen.query("HelpPanel")
        await pilot.press("escape")
        await pilot.pause()
        assert not app.screen.query("HelpPanel")
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running  # nothing unsaved: q quits at once


# the first run -----------------------------------------------------------------------------------


async def test_a_first_run_is_one_key_away(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = []
    monkeypatch.setattr(runs, "spawn_detached", lambda argv, log_path, **kw: started.append((argv, log_path)) or 1)
    app = PicochatApp(tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        welcome = text_of(app.screen.query_one("#runs-empty", Static))
        assert "Welcome" in welcome and "start the tiny run" in welcome and "enter" in welcome
        await pilot.press("enter")
        await pilot.pause()
    (argv, log_path), = started
    assert argv[-4:] == ["speedrun", str(tmp_path / "configs" / "tiny.toml"), "--until", "pretrain"]
    cfg = config_module.load(tmp_path / "configs" / "tiny.toml")
    assert cfg.out_dir == tmp_path / "runs" / "tiny" and log_path == cfg.out_dir / "train.log"
    assert app.current_run == cfg.out_dir


async def test_garbage_in_a_followed_folder_never_stops_the_watcher(runs_dir):
    run = runs_dir / "tiny-done"
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        app.open_run(run)
        await pilot.pause()
        (run / "status.json").write_text('{"state": ["running"], "step": {"a": 1}, "pid": "me"}')
        with open(run / "metrics.jsonl", "a") as handle:
            handle.write("[" * 5000 + "\n" + '{"kind": "train", "step": 301, "loss": "low"}\n')
            handle.write('{"kind": "train", "step": 302, "loss": 1.5, "t": 1750000200.0}\n')
        headline = app.screen.query_one("#dash-headline", Static)
        assert await until(pilot, lambda: "corrupt metrics line" in text_of(headline))
        assert "crashed" in text_of(headline)  # the status without its garbage: no state, no pid
        assert app.screen.query_one("#plot-loss", MetricPlot).lines[0].xs[-1] == 302
        assert app.is_running
        assert [worker for worker in app.workers if worker.group == "watcher" and worker.is_running]


async def test_results_that_arrive_on_another_screen_show_on_return(runs_dir):
    checkpoint = runs_dir / "tiny-done" / "checkpoints" / "step_000100"
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        app.open_eval(checkpoint)
        await pilot.pause()
        await pilot.press("1")
        (checkpoint / "evals.json").write_text(json.dumps({"mmlu": {"accuracy": 0.3}}))
        assert await until(pilot, lambda: app.model.checkpoint(checkpoint).evals)
        await pilot.press("6")
        await pilot.pause()
        assert ["step_000100", "-", "-", "-", "0.3000"] in rows_of(app.screen.query_one("#eval-results", DataTable))


@pytest.mark.slow
async def test_17_quantize_keeps_its_bpb_with_the_copy(tiny_checkpoint, tmp_path):
    from workbench.cli import main

    runs_dir = tmp_path / "runs"
    run = runs_dir / "tiny-run"
    shutil.copytree(tiny_checkpoint.parent.parent, run)
    assert main(["quantize", str(run / "checkpoints" / tiny_checkpoint.name), "--eval-tokens", "512",
                 "--decode-tokens", "0"]) == 0
    copy = run / "int8" / tiny_checkpoint.name
    measured = json.loads((copy / "evals.json").read_text())["bpb"]
    app = PicochatApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        headers = [str(column.label) for column in table.columns.values()]
        row = dict(zip(headers, next(r for r in rows_of(table) if r[1] == f"int8/{copy.name}"), strict=True))
        assert row["val bpb"] == f"{measured['bpb']:.4f}"
