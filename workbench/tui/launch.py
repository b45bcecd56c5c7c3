"""Starting workers from the TUI: always detached (own session, output to a log file, no pipes),
so closing the TUI or losing SSH never stops them, and a new TUI re-attaches by reading the run
folder. No torch here."""

from __future__ import annotations

import os
from pathlib import Path

from workbench import config as config_module
from workbench import runs
from workbench.errors import BadInput

STAGES = ("prepare", "tokenizer", "pretrain", "sft", "grpo", "eval")
EVAL_TASKS = ("bpb", "arc-easy", "arc-challenge", "mmlu", "hellaswag", "gsm8k", "humaneval")


def config_files(runs_dir: Path) -> list[Path]:
    """Configs to pick from: ./configs, the repo's configs/ and every run's frozen config.toml."""
    found: dict[Path, None] = {}
    for folder in (Path("configs"), config_module.REPO_DIR / "configs"):
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found.setdefault(path.resolve(), None)
    for info in runs.list_runs(runs_dir):
        path = info.path / "config.toml"
        if path.is_file():
            found.setdefault(path.resolve(), None)
    return list(found)


def display_path(path: Path) -> str:
    """A path relative to the working directory when it is below it (shorter, and stable in tests)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def launch_stage(stage: str, config_path: Path) -> tuple[Path, int]:
    """Start `picochat STAGE CONFIG` detached; its output goes to the stage's run folder/train.log.
    `eval` evaluates the newest checkpoint of the run with the config's [eval] tasks.
    Raises BadInput when the config is invalid (nothing is started then)."""
    if stage not in STAGES:
        raise BadInput(f"{stage}: unknown stage (one of {', '.join(STAGES)})")
    cfg = config_module.load(config_path)
    run_dir = cfg.stage_dir(stage)
    if stage == "eval":
        return launch_eval(run_dir, cfg.eval.tasks, cfg.eval.limit)
    existing = runs.read_status(run_dir)
    if existing and runs.effective_state(existing) in ("running", "paused", "starting", "stalled") \
            and existing.get("stage") == stage:
        raise BadInput(f"{run_dir}: a {stage} worker is already running there (pid {existing.get('pid')})")
    argv = runs.picochat_command(stage, str(Path(config_path).resolve()))
    pid = runs.spawn_detached(argv, log_path=run_dir / "train.log", env=_worker_env())
    return run_dir, pid


def launch_resume(checkpoint: Path) -> tuple[Path, int]:
    """Continue training a run from its checkpoints with its frozen config (`STAGE CONFIG --resume`)."""
    run_dir = checkpoint.parent.parent
    stage = _checkpoint_stage(checkpoint)
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise BadInput(f"{config_path}: the run has no frozen config to resume with")
    argv = runs.picochat_command(stage, str(config_path.resolve()), "--resume")
    return run_dir, runs.spawn_detached(argv, log_path=run_dir / "train.log", env=_worker_env())


def launch_eval(checkpoint: Path, tasks: list[str], limit: int = 0) -> tuple[Path, int]:
    """`picochat eval CHECKPOINT --tasks ... --limit N`, logging into the checkpoint's run folder."""
    checkpoint = Path(checkpoint)
    if not tasks:
        raise BadInput("no eval tasks chosen")
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
    argv = runs.picochat_command("eval", str(checkpoint.resolve()), "--tasks", ",".join(tasks))
    if limit:
        argv += ["--limit", str(limit)]
    return run_dir, runs.spawn_detached(argv, log_path=run_dir / "eval.log", env=_worker_env())


def launch_quantize(checkpoint: Path) -> tuple[Path, int]:
    run_dir = checkpoint.parent.parent
    argv = runs.picochat_command("quantize", str(checkpoint.resolve()))
    return run_dir, runs.spawn_detached(argv, log_path=run_dir / "quantize.log", env=_worker_env())


def _checkpoint_stage(checkpoint: Path) -> str:
    import json

    try:
        stage = json.loads((checkpoint / "meta.json").read_text()).get("stage", "pretrain")
    except (OSError, ValueError):
        stage = "pretrain"
    return stage if stage in ("pretrain", "sft", "grpo") else "pretrain"


def _worker_env() -> dict[str, str]:
    """Workers run with this interpreter's package importable even outside the checkout."""
    env = dict(os.environ)
    repo = str(config_module.REPO_DIR)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
