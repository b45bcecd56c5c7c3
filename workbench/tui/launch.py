"""Starting workers from the TUI: always detached (own session, output to a log file, no pipes),
so closing the TUI or losing SSH never stops them, and a new TUI re-attaches by reading the run
folder. What can be checked before starting (an invalid config, a run that would be overwritten, a
resume with nothing left to do) is refused here with BadInput; what fails later shows in the log,
which the app watches for the first lines of a worker that exits with an error. No torch here."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from workbench import checkpoint_files, runs, stages
from workbench import config as config_module
from workbench.errors import BadInput
from workbench.stages import TRAINING_STAGES, WORKER_STAGES

EVAL_TASKS = ("bpb", "arc-easy", "arc-challenge", "mmlu", "hellaswag", "gsm8k", "humaneval", "core", "chatcore")


@dataclass
class Launched:
    """A worker this TUI started: the app watches it and reports how it ended."""

    what: str  # "pretrain", "eval", "quantize", ...
    run_dir: Path
    pid: int
    log_path: Path
    log_offset: int  # the log's size before the worker started: its own lines come after


def _spawn(what: str, argv: list[str], run_dir: Path, log_path: Path) -> Launched:
    try:
        offset = log_path.stat().st_size
    except FileNotFoundError:
        offset = 0
    pid = runs.spawn_detached(argv, log_path=log_path, env=_worker_env())
    return Launched(what, run_dir, pid, log_path, offset)


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


# ---- which stage comes next ----


def running_stage(cfg: config_module.Config) -> str | None:
    """The stage a live worker of this config is running now (None: none is)."""
    for folder in dict.fromkeys(stages.run_dir(cfg, stage) for stage in WORKER_STAGES):
        status = runs.read_status(folder)
        if status and runs.effective_state(status) in runs.LIVE_STATES and status.get("stage") in WORKER_STAGES:
            return status["stage"]
    return None


def suggested_stage(cfg: config_module.Config) -> str:
    """The stage the run needs next (stages.next_stage: a stage stopped part-way comes before the
    ones after it), eval once all are done; while a stage is running, that stage (nothing after
    it can start before it ends)."""
    return running_stage(cfg) or stages.next_stage(cfg) or "eval"


# ---- a new run's config: in the user's folder, with a name of its own ----


def user_config_dir() -> Path:
    """Where new configs go: ./configs of the folder the TUI was started in (never the package)."""
    return Path.cwd() / "configs"


def first_run_config() -> Path:
    """The config the welcome panel starts: ./configs/tiny.toml when there is one, else the
    embedded default (launch_first_run copies it into ./configs first)."""
    local = user_config_dir() / "tiny.toml"
    return local if local.is_file() else config_module.default_config_path()


def new_config(runs_dir: Path, stem: str = "new") -> Path:
    """Write ./configs/STEM.toml (or STEM-2, STEM-3, ...): the tiny config as a run of its own,
    [run] name = the file's stem and out_dir = RUNS_DIR/that name, the first name free both as
    a config and as a run folder; its other paths absolute when ./configs is not the checkout's,
    so it still finds the bundled data. Returns the path."""
    folder = user_config_dir()
    name, number = stem, 2
    while (folder / f"{name}.toml").exists() or (Path(runs_dir) / name).exists():
        name, number = f"{stem}-{number}", number + 1
    default = config_module.default_config_path()
    text = default.read_text(encoding="utf-8")
    text, _ = rebase_paths(text, config_base_dir(default), config_base_dir(folder / "x.toml"))
    cfg, errors = config_module.parse(text, str(default))
    if errors:
        raise BadInput(errors[0])
    out_dir = Path(runs_dir) / name
    text = _replace_string(text, "run", "name", cfg.run.name, name)
    text = _replace_string(text, "run", "out_dir", cfg.run.out_dir, str(out_dir))
    path = folder / f"{name}.toml"
    runs.atomic_write_text(path, text)
    return path


def launch_first_run(runs_dir: Path) -> Launched:
    """The welcome panel's enter: prepare, tokenizer and pretraining of the tiny config in one
    detached worker (`picochat speedrun CONFIG --until pretrain`), into RUNS_DIR/tiny (or a free
    name) unless ./configs/tiny.toml says otherwise."""
    config_path = first_run_config()
    if config_path == config_module.default_config_path() and user_config_dir() != config_path.parent:
        config_path = new_config(runs_dir, "tiny")
    cfg = config_module.load(config_path)
    if runs.list_checkpoints(cfg.out_dir):
        raise BadInput(f"{display_path(cfg.out_dir)} already has checkpoints: open it from Runs, or n for a new run")
    argv = runs.picochat_command("speedrun", str(config_path.resolve()), "--until", "pretrain")
    return _spawn("tiny run (prepare, tokenizer, pretrain)", argv, cfg.out_dir, cfg.out_dir / "train.log")


# ---- launching ----


def launch_stage(stage: str, config_path: Path) -> Launched:
    """Start `picochat STAGE CONFIG` detached; its output goes to the stage's run folder/train.log.
    `eval` evaluates the newest checkpoint of the run with the config's [eval] tasks.
    Raises BadInput when the config is invalid or the stage cannot start (nothing is started then)."""
    if stage not in WORKER_STAGES:
        raise BadInput(f"{stage}: unknown stage (one of {', '.join(WORKER_STAGES)})")
    cfg = config_module.load(config_path)
    run_dir = stages.run_dir(cfg, stage)
    if stage == "eval":
        newest = runs.list_checkpoints(stages.run_dir(cfg, "pretrain"))
        if not newest:
            raise BadInput(f"{stages.run_dir(cfg, 'pretrain')}: no checkpoint to evaluate yet (pretrain first)")
        return launch_eval(newest[-1], cfg.eval.tasks, cfg.eval.limit)
    existing = runs.read_status(run_dir)
    if existing and runs.effective_state(existing) in runs.LIVE_STATES and existing.get("stage") == stage:
        raise BadInput(f"{run_dir}: a {stage} worker is already running there (pid {existing.get('pid')})")
    checkpoints = runs.list_checkpoints(run_dir)
    if stage in TRAINING_STAGES and checkpoints:
        # The worker would refuse too, but only in its log: say it here, with the way forward.
        raise BadInput(f"{display_path(run_dir)} already has checkpoints (newest {checkpoints[-1].name}): "
                       f"resume it (r on Checkpoints), or give [run] name another value")
    argv = runs.picochat_command(stage, str(Path(config_path).resolve()))
    return _spawn(stage, argv, run_dir, run_dir / "train.log")


def resume_plan(checkpoint: Path) -> tuple[str, Path, int, int]:
    """What `r` on a checkpoint would do: (stage, the checkpoint it continues from, its step, the
    step it trains to). Training always continues from the run's newest checkpoint."""
    run_dir = checkpoint.parent.parent
    if checkpoint.parent.name != "checkpoints":
        raise BadInput(f"{checkpoint}: an exported or INT8 copy cannot be trained on; pick one under checkpoints/")
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise BadInput(f"{config_path}: the run has no frozen config to resume with")
    status = runs.read_status(run_dir)
    if status and runs.effective_state(status) in runs.LIVE_STATES and status.get("stage") in TRAINING_STAGES:
        raise BadInput(f"{run_dir.name} is still {runs.effective_state(status)}: stop it before resuming")
    newest = runs.list_checkpoints(run_dir)[-1]
    stage = _checkpoint_stage(newest)
    cfg = config_module.load(config_path)
    total = stages.configured_steps(cfg, stage)
    step = checkpoint_files.read_meta(newest).get("step", 0)  # a garbage meta.json: the worker's resume reports it
    if step >= total:
        raise BadInput(f"{run_dir.name} has done all {total} steps: raise the {stage} steps in "
                       f"{display_path(config_path)} to train further")
    return stage, newest, step, total


def launch_resume(checkpoint: Path) -> Launched:
    """Continue training a run from its checkpoints with its frozen config (`STAGE CONFIG --resume`)."""
    stage, newest, _, _ = resume_plan(checkpoint)
    run_dir = newest.parent.parent
    argv = runs.picochat_command(stage, str((run_dir / "config.toml").resolve()), "--resume")
    return _spawn(stage, argv, run_dir, run_dir / "train.log")


def launch_eval(checkpoint: Path, tasks: list[str], limit: int = 0) -> Launched:
    """`picochat eval CHECKPOINT --tasks ... --limit N`, logging into the checkpoint's run folder."""
    checkpoint = Path(checkpoint)
    if not tasks:
        raise BadInput("no eval tasks chosen")
    run_dir = checkpoint.parent.parent if checkpoint.parent.name in ("checkpoints", "int8") else checkpoint
    argv = runs.picochat_command("eval", str(checkpoint.resolve()), "--tasks", ",".join(tasks))
    if limit:
        argv += ["--limit", str(limit)]
    return _spawn("eval", argv, run_dir, run_dir / "eval.log")


def launch_quantize(checkpoint: Path) -> Launched:
    """`picochat quantize CHECKPOINT`: an INT8 copy in RUN/int8/step_N (the Checkpoints screen lists it)."""
    if checkpoint_files.read_meta(checkpoint).get("quantization") == "int8":
        raise BadInput(f"{checkpoint.name} is already an INT8 copy")
    run_dir = checkpoint.parent.parent
    argv = runs.picochat_command("quantize", str(checkpoint.resolve()))
    return _spawn("quantize", argv, run_dir, run_dir / "quantize.log")


# ---- watching what was launched ----


def failure_line(launched: Launched) -> str:
    """The worker's own last error line from its log ("picochat X: error: ..."), else its last line."""
    try:
        with open(launched.log_path, "rb") as handle:
            handle.seek(launched.log_offset)
            lines = [line.strip() for line in handle.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if re.search(r"error", line, re.IGNORECASE)]
    return (errors or lines or [""])[-1]


# ---- saving a config somewhere else ----

# (section, key) of every path a config names; lists are marked.
PATH_KEYS = (("run", "out_dir", False), ("data", "sources", True), ("data", "dir", False),
             ("tokenizer", "path", False), ("sft", "init_from", False), ("eval", "data_dir", False))


def config_base_dir(path: Path) -> Path:
    """Where relative paths in a config file resolve from (as config.load does)."""
    base = Path(path).resolve().parent
    return base.parent if base.name == "configs" else base


def rebase_paths(text: str, old_base: Path, new_base: Path) -> tuple[str, list[str]]:
    """The config text with every relative path that would point elsewhere from new_base (a config
    saved into another folder) replaced by the absolute path it meant at old_base. Only those
    string literals change: comments and layout stay. Returns (text, the paths rewritten)."""
    cfg, errors = config_module.parse(text, "<config>")
    if errors:
        return text, []
    old, new = config_module.Config(), config_module.Config()
    old.base_dir, new.base_dir = old_base, new_base
    rewritten = []
    for section, key, is_list in PATH_KEYS:
        values = getattr(getattr(cfg, section), key)
        for value in (values if is_list else [values]):
            if not value or Path(value).expanduser().is_absolute():
                continue
            before = old.resolve_path(value).resolve()
            if new.resolve_path(value).resolve() == before:
                continue
            replaced = _replace_string(text, section, key, value, str(before))
            if replaced != text:
                text = replaced
                rewritten.append(value)
    return text, rewritten


def _replace_string(text: str, section: str, key: str, old: str, new: str) -> str:
    """The config text with the string `old` of [section] key (its value, or the first equal item
    of its list) set to `new`, and nothing else changed: comments, layout and the other values'
    quoting stay as they were, and `new` is quoted and escaped as TOML wants. The text unchanged
    when the key does not hold `old`."""
    import tomlkit  # here: the TUI starts without loading it
    from tomlkit.exceptions import TOMLKitError

    try:
        document = tomlkit.parse(text)
    except TOMLKitError:  # callers parse the text first; one that does not parse is left as it is
        return text
    table = document.get(section)
    value = table.get(key) if isinstance(table, dict) else None
    if isinstance(value, list) and old in value:
        value[value.index(old)] = new
    elif isinstance(value, str) and value == old:
        table[key] = new
    else:
        return text
    return tomlkit.dumps(document)


# ---- helpers ----


def _checkpoint_stage(checkpoint: Path) -> str:
    stage = checkpoint_files.read_meta(checkpoint).get("stage", "pretrain")
    return stage if stage in TRAINING_STAGES else "pretrain"


def _worker_env() -> dict[str, str]:
    """Workers run with this interpreter's package importable even outside the checkout."""
    env = dict(os.environ)
    repo = str(config_module.REPO_DIR)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
