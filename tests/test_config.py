"""Config loading and validation: every problem names the file, the line and the key."""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import config as config_module
from workbench.cli import main as cli_main
from workbench.errors import BadInput

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["tiny", "d4", "d8", "d20"])
def test_shipped_configs_are_valid(name):
    config = config_module.load(REPO / "configs" / f"{name}.toml")
    assert config.run.name == name
    model = config.model.resolved()
    assert model.width % model.heads == 0 and model.heads % model.kv_heads == 0


def test_defaults_and_derived_sizes():
    config, errors = config_module.parse("[model]\ndepth = 4\n")
    assert errors == []
    model = config.model.resolved()
    assert (model.width, model.heads, model.kv_heads) == (256, 4, 2)
    model8 = config_module.parse("[model]\ndepth = 8\n")[0].model.resolved()
    assert (model8.width, model8.heads, model8.kv_heads) == (512, 8, 4)


def test_unknown_key_names_line_and_suggests(tmp_path):
    path = write(tmp_path, "[run]\nname = 'x'\n\n[train]\nsteps = 10\nwarmup_step = 3\n")
    with pytest.raises(BadInput) as error:
        config_module.load(path)
    message = str(error.value)
    assert f"{path}:6" in message
    assert "unknown key 'warmup_step'" in message
    # the closest real key is suggested
    assert "did you mean 'warmup_steps'" in message


def test_typo_in_key_suggests_closest(tmp_path):
    path = write(tmp_path, "[model]\ndepht = 4\n")
    with pytest.raises(BadInput, match=r"run.toml:2: \[model\] unknown key 'depht' \(did you mean 'depth'\?\)"):
        config_module.load(path)


def test_wrong_type_and_out_of_range(tmp_path):
    path = write(tmp_path, "[train]\nsteps = 'many'\n")
    with pytest.raises(BadInput, match=r":2: \[train\] steps: must be an integer"):
        config_module.load(path)
    path = write(tmp_path, "[data]\nval_fraction = 0.9\n")
    with pytest.raises(BadInput, match=r":2: \[data\] val_fraction: must be <= 0.5"):
        config_module.load(path)
    path = write(tmp_path, "[run]\ndevice = 'tpu'\n")
    with pytest.raises(BadInput, match="must be one of auto, cpu, cuda, mps"):
        config_module.load(path)


def test_unknown_section(tmp_path):
    path = write(tmp_path, "[trian]\nsteps = 1\n")
    with pytest.raises(BadInput, match=r"run.toml:1: unknown section \[trian\] \(did you mean 'train'\?\)"):
        config_module.load(path)


def test_malformed_toml_has_line(tmp_path):
    path = write(tmp_path, "[run]\nname = 'x'\nseed = = 3\n")
    with pytest.raises(BadInput, match=r"run.toml:3: malformed TOML"):
        config_module.load(path)


def test_batch_must_divide(tmp_path):
    path = write(tmp_path, "[model]\nseq_len = 100\n[train]\ntotal_batch_tokens = 1000\ndevice_batch_size = 3\n")
    with pytest.raises(BadInput, match="must be a multiple of device_batch_size"):
        config_module.load(path)


def test_roundtrip_through_toml(tmp_path):
    config = config_module.load(REPO / "configs" / "d4.toml")
    out = tmp_path / "frozen.toml"
    config_module.save(config.frozen(), out)
    again = config_module.load(out)
    assert again.model == config.model
    assert again.train == config.train
    assert again.out_dir == config.out_dir  # absolute after freezing: valid from anywhere
    assert Path(again.data.sources[0]).is_absolute()


def test_cli_check_and_show(tmp_path, capsys):
    assert cli_main(["config", "check", str(REPO / "configs" / "tiny.toml")]) == 0
    assert "ok" in capsys.readouterr().out
    assert cli_main(["config", "show", str(REPO / "configs" / "tiny.toml")]) == 0
    shown = capsys.readouterr().out
    assert "width = 128" in shown  # derived size filled in


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, "[model]\ndepht = 4\n")
    result = subprocess.run([sys.executable, "-m", "workbench.cli", "config", "check", str(path)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert str(path) in result.stderr and "Traceback" not in result.stderr
    missing = subprocess.run([sys.executable, "-m", "workbench.cli", "config", "check", str(tmp_path / "nope.toml")],
                             capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 2 and "config file not found" in missing.stderr


# ---- hostile values: deep nesting, NaN and inf, absurd sizes (issue 16, items 5 and 13) ----


def test_deeply_nested_toml_is_one_line_not_a_traceback(tmp_path):
    path = write(tmp_path, "[run]\nname = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(BadInput, match=r"run.toml: nested too deeply"):
        config_module.load(path)
    config, errors = config_module.parse(path.read_text(), path)  # the TUI editor's path: never raises
    assert len(errors) == 1 and "nested too deeply" in errors[0]
    result = subprocess.run([sys.executable, "-m", "workbench.cli", "config", "check", str(path)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]


def test_a_nested_value_is_shown_briefly(tmp_path):
    path = write(tmp_path, "[data]\nsources = " + "[" * 400 + "]" * 400 + "\n")
    with pytest.raises(BadInput, match=r"run.toml:2: \[data\] sources: must be a list of strings") as caught:
        config_module.load(path)
    assert len(str(caught.value)) < 300


def fields_of_type(kind: type) -> list[tuple[str, str]]:
    return [(section, f.name) for section, cls in config_module.SECTIONS.items()
            for f in dataclasses.fields(cls) if type(getattr(cls(), f.name)) is kind]


@pytest.mark.parametrize("section, key", fields_of_type(float))
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_must_be_finite(section, key, value):
    _, errors = config_module.parse(f"[{section}]\n{key} = {value}\n", "run.toml")
    assert errors and errors[0].startswith(f"run.toml:2: [{section}] {key}: must be a finite number"), errors


@pytest.mark.parametrize("section, key", fields_of_type(int))
def test_every_integer_has_a_sane_upper_bound(section, key):
    _, errors = config_module.parse(f"[{section}]\n{key} = {2**62}\n", "run.toml")
    assert errors and errors[0].startswith(f"run.toml:2: [{section}] {key}: must be <= "), errors


def test_the_reported_cases_name_file_line_and_key(tmp_path):
    cases = [("data", "val_fraction", "nan", "must be a finite number"),
             ("train", "matrix_lr", "inf", "must be a finite number"),
             ("model", "logit_softcap", "nan", "must be a finite number"),
             ("grpo", "temperature", "inf", "must be a finite number"),
             ("model", "seq_len", str(2**34), "must be <= 65536")]
    for section, key, value, problem in cases:
        path = write(tmp_path, f"# comment\n[{section}]\n{key} = {value}\n")
        with pytest.raises(BadInput, match=rf"run.toml:3: \[{section}\] {key}: {problem}"):
            config_module.load(path)


def test_a_nan_learning_rate_never_reaches_training(tmp_path, capsys):
    path = write(tmp_path, "[train]\nmatrix_lr = nan\n")
    assert cli_main(["pretrain", str(path)]) == 2
    assert "[train] matrix_lr: must be a finite number" in capsys.readouterr().err
    with pytest.raises(BadInput, match="matrix_lr: must be a finite number"):  # a checkpoint's config.json
        config_module.from_dict({"train": {"matrix_lr": float("nan")}})


def test_sample_settings_mean_the_same_to_config_and_engine():
    from workbench.engine.sampling import SamplingParams

    grid = {"temperature": [-1.0, 0.0, 0.7, 50.0, math.nan, math.inf], "top_k": [-1, 0, 40],
            "top_p": [-0.1, 0.0, 0.5, 1.0, 1.1, math.nan], "repetition_penalty": [-1.0, 0.0, 0.5, 1.3, math.inf],
            "max_tokens": [0, 1, 4096]}
    for key, values in grid.items():
        for value in values:
            _, errors = config_module.validate({"sample": {key: value}})
            try:
                SamplingParams(**{key: value})
                engine_accepts = True
            except ValueError:
                engine_accepts = False
            assert (not errors) == engine_accepts, (key, value, errors)
