"""Checkpoints: atomic saves, finding the newest, and loading that refuses anything broken with a
one-line BadInput naming the file."""

import json
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from workbench import runs
from workbench.checkpoint import load_checkpoint, save_checkpoint
from workbench.checkpoint_files import resolve_checkpoint
from workbench.errors import BadInput
from workbench.train.common import capture_rng_states, restore_rng_states


@pytest.fixture
def checkpoint_copy(tiny_checkpoint, tmp_path):
    """A private copy of the session checkpoint (inside a run folder) that a test may damage."""
    target = tmp_path / "run" / "checkpoints" / tiny_checkpoint.name
    shutil.copytree(tiny_checkpoint, target)
    return target


def test_round_trip(tiny_checkpoint, tiny_config):
    loaded = load_checkpoint(tiny_checkpoint, with_optimizer=True)
    assert loaded.step == 40 and loaded.meta["stage"] == "pretrain" and loaded.meta["tokens"] == 40 * 512
    assert loaded.meta["val_bpb"] is not None and loaded.meta["loader_state"]["seq_len"] == 64
    assert loaded.config.model == tiny_config.model and loaded.tokenizer.vocab_size == 512
    assert loaded.optimizer_tensors and "steps_taken" in loaded.optimizer_tensors
    assert not loaded.model.training
    # config.json is frozen: absolute paths, valid from any working directory
    assert loaded.config.data_dir == tiny_config.data_dir
    again = load_checkpoint(tiny_checkpoint.parent.parent)  # the run folder -> its newest
    idx = torch.randint(0, 512, (2, 16))
    assert torch.equal(loaded.model(idx), again.model(idx))


def test_resolve(tiny_checkpoint, tmp_path):
    run_dir = tiny_checkpoint.parent.parent
    assert resolve_checkpoint(tiny_checkpoint) == tiny_checkpoint
    assert resolve_checkpoint(run_dir) == tiny_checkpoint
    assert resolve_checkpoint(run_dir / "checkpoints") == tiny_checkpoint
    with pytest.raises(BadInput, match="no such"):
        resolve_checkpoint(tmp_path / "absent")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(BadInput, match="no checkpoints"):
        resolve_checkpoint(tmp_path / "empty-run")


def test_keep_last_and_same_step_resave(tiny_checkpoint, tmp_path):
    loaded = load_checkpoint(tiny_checkpoint)
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, loaded.model, loaded.config, loaded.tokenizer, keep_last=3)
    assert [p.name for p in runs.list_checkpoints(tmp_path)] == ["step_000003", "step_000004", "step_000005"]
    path = save_checkpoint(tmp_path, 5, loaded.model, loaded.config, loaded.tokenizer, meta={"val_bpb": 1.5},
                           keep_last=3)
    assert json.loads((path / "meta.json").read_text())["val_bpb"] == 1.5
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_000003", "step_000004", "step_000005"]  # no temporary folders left behind


def test_leftover_temporary_folder_from_a_killed_save(checkpoint_copy):
    """A kill -9 during a save leaves `.tmp-step_N` with a truncated file: it is never mistaken for
    a checkpoint, the previous one still loads, and the next save clears it."""
    run_dir = checkpoint_copy.parent.parent
    broken = checkpoint_copy.parent / ".tmp-step_000060"
    shutil.copytree(checkpoint_copy, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    (broken / "meta.json").unlink()
    assert resolve_checkpoint(run_dir) == checkpoint_copy
    loaded = load_checkpoint(run_dir)
    assert loaded.step == 40
    save_checkpoint(run_dir, 60, loaded.model, loaded.config, loaded.tokenizer)
    assert not broken.exists() and load_checkpoint(run_dir).step == 60


def test_kill_9_during_saves_leaves_a_loadable_checkpoint(tiny_checkpoint, tmp_path):
    """A real process saving checkpoints in a loop, killed with SIGKILL at a random moment."""
    run_dir = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys
        from workbench.checkpoint import load_checkpoint, save_checkpoint
        loaded = load_checkpoint({str(tiny_checkpoint)!r})
        step = 0
        while True:
            step += 1
            save_checkpoint({str(run_dir)!r}, step, loaded.model, loaded.config, loaded.tokenizer, keep_last=2)
            print(step, flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # at least three complete saves, then a kill at an arbitrary moment
            assert process.stdout.readline(), "the saving process died"
        time.sleep(random.uniform(0.0, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    newest = load_checkpoint(run_dir)
    assert newest.step >= 3
    for folder in runs.list_checkpoints(run_dir):
        load_checkpoint(folder)


def test_truncated_model_file_is_bad_input(checkpoint_copy):
    path = checkpoint_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BadInput, match=r"model\.safetensors: corrupt or truncated"):
        load_checkpoint(checkpoint_copy)


def test_truncated_optimizer_file_is_bad_input(checkpoint_copy):
    path = checkpoint_copy / "optimizer.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    load_checkpoint(checkpoint_copy)  # not needed for inference
    with pytest.raises(BadInput, match=r"optimizer\.safetensors: corrupt or truncated"):
        load_checkpoint(checkpoint_copy, with_optimizer=True)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_missing_file_is_bad_input(checkpoint_copy, name):
    (checkpoint_copy / name).unlink()
    with pytest.raises(BadInput, match=name.replace(".", r"\.")):
        load_checkpoint(checkpoint_copy)


def test_a_folder_without_meta_json_loads_with_one_warning_but_never_resumes(checkpoint_copy, capsys):
    from workbench.cli import main

    (checkpoint_copy / "meta.json").unlink()
    (checkpoint_copy / "optimizer.safetensors").unlink()  # weights + config + tokenizer, as picochat-rs ships
    loaded = load_checkpoint(checkpoint_copy)
    assert loaded.meta == {} and loaded.step == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: {checkpoint_copy}: no meta.json")
    with pytest.raises(BadInput, match=r"meta\.json: missing from the checkpoint, so training cannot resume"):
        load_checkpoint(checkpoint_copy, with_optimizer=True)
    assert main(["chat", str(checkpoint_copy), "-p", "Hello", "--temperature", "0", "--max-tokens", "4",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().err.count("warning:") == 1


def test_garbage_files_are_bad_input(checkpoint_copy):
    (checkpoint_copy / "meta.json").write_text("{not json")
    with pytest.raises(BadInput, match=r"meta\.json"):
        load_checkpoint(checkpoint_copy)


def test_shape_mismatch_against_config_is_refused(checkpoint_copy):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["model"]["width"] = 128
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BadInput, match=r"model\.safetensors: .*shape"):
        load_checkpoint(checkpoint_copy)


def test_vocab_mismatch_against_tokenizer_is_refused(checkpoint_copy):
    from workbench.tokenizer import train_tokenizer

    texts = ["a different tokenizer, trained on other text " * 3, "with another vocabulary size " * 5] * 10
    train_tokenizer(iter(texts), vocab_size=300, min_frequency=1).save(checkpoint_copy / "tokenizer.json")
    with pytest.raises(BadInput, match=r"vocabulary size 512 in the weights, but tokenizer\.json has"):
        load_checkpoint(checkpoint_copy)


def test_rng_states_round_trip_through_json():
    torch.manual_seed(3)
    random.seed(3)
    states = json.loads(json.dumps(capture_rng_states()))
    expected = (torch.rand(4), random.random())
    torch.manual_seed(99)
    random.seed(99)
    restore_rng_states(states)
    got = (torch.rand(4), random.random())
    assert torch.equal(expected[0], got[0]) and expected[1] == got[1]


def test_cli_reports_bad_checkpoint_in_one_line(checkpoint_copy, capsys):
    """A verb that loads checkpoints (eval, chat, ...) turns BadInput into exit 2 and one line."""
    from workbench.cli import main
    from workbench.evals.bpb import bpb_for_checkpoint

    path = checkpoint_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(BadInput) as caught:
        bpb_for_checkpoint(checkpoint_copy)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    assert main(["pretrain", str(checkpoint_copy / "no-such-config.toml")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_checkpoint_readers_never_fail_on_garbage(tmp_path):
    """The torch-free readers (TUI, serve's model card, speedrun, report, sweep) read a broken
    meta/config/evals file as missing fields, never as an exception; speedrun's newest step was a
    TypeError on a meta.json step that is a list."""
    from workbench import checkpoint_files, stages
    from workbench.evals.report import eval_results

    run_dir = tmp_path / "run"
    folder = run_dir / "checkpoints" / "step_000001"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"step": [1], "stage": 3, "tokens": 5, "val_bpb": "low",
                                                  "loader_state": {}, "params": 7}))
    (folder / "config.json").write_text("[1, 2]")
    (folder / "evals.json").write_text("{not json")
    assert checkpoint_files.newest(run_dir) == folder
    assert checkpoint_files.read_meta(folder) == {"tokens": 5, "loader_state": {}, "params": 7}
    assert checkpoint_files.read_config(folder) == {} and checkpoint_files.read_evals(folder) == {}
    assert stages.newest_step(run_dir) == 0
    assert eval_results({"": run_dir}) == []
    (folder / "evals.json").write_text(json.dumps({"mmlu": {"accuracy": 0.3}}))
    assert eval_results({"": run_dir})[0]["stage"] == "pretrain"


@pytest.mark.parametrize("field", ["step", "tokens", "total_steps"])
def test_an_absurd_count_in_meta_json_is_one_line_naming_the_field(tmp_path, field):
    from workbench import checkpoint_files

    meta = {"step": 4, "tokens": 2048, field: 10**30}
    with pytest.raises(BadInput) as caught:
        checkpoint_files.check_meta(tmp_path, meta)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'meta.json'}: {field}: must be a whole number from 0 to ")
    assert "\n" not in message and len(message) < 200
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert field not in checkpoint_files.read_meta(tmp_path)  # the screens read it as missing
    meta[field] = checkpoint_files.META_COUNTS[field]  # the bound itself is a count
    assert checkpoint_files.check_meta(tmp_path, meta)[field] == meta[field]
