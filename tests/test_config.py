"""Config loading and validation: every problem names the file, the line and the key."""

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
