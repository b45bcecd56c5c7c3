"""Sweeps: one config, a grid (or a list) of settings, one ordinary pretraining run per point.

    picochat sweep configs/tiny.toml --set train.matrix_lr=0.01,0.02,0.04 --set model.depth=2,4

Layout: the points are sibling run folders, so every reader of run folders (`picochat runs`,
`status`, `eval`, `chat`, `report`, the TUI's screens) sees each point as the run it is:

    runs/SWEEP/                        the sweep's own folder (not a run: it has no status.json)
      sweep.json                       the plan and every point's result, best first
      sweep.md                         the results table
      sweep.log                        the driver's output when it was started with --detach
      data/  tokenizer.json            prepared data and tokenizer the points share, or one per
      data-val_fraction0.1/  tokenizer-vocab_size1024.json    data / tokenizer setting swept
    runs/SWEEP-matrix_lr0.01-depth2/   one pretraining run folder per point
    runs/SWEEP-matrix_lr0.01-depth4/   ...

SWEEP is --name, by default "<[run] name>-sweep", beside the run folder the config names. A point
is named after its varying settings, key and value ("matrix_lr0.02"; "train.steps300" when two
sections share a key name). Settings given one value (and --budget) apply to every point and stay
out of the names.

Data and tokenizer: prepared data depends on the [data] keys only, a tokenizer on the [data] and
[tokenizer] keys. Points that set none of them share the config's own ([data] dir / [tokenizer]
path when it names them, else SWEEP/data and SWEEP/tokenizer.json); points that set some share one
named after those settings. The driver prepares each once, just before the first point needing it.

The driver (`run_sweep`) starts each point as a detached `picochat pretrain` worker, one after
another (or `parallel` at once), waits for it, and rewrites sweep.json and sweep.md as points end.
Running it again skips finished points (the final checkpoint is at the run's last step), resumes
unfinished ones with --resume, waits for ones still running and retries failed ones. A point's
score is the val bpb its run measured on the held-out (val) split at its last step.

No torch here: the TUI lists sweeps with `list_sweeps`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import checkpoint_files, runs, stages
from workbench import config as config_module
from workbench.errors import BadInput
from workbench.runs import LIVE_STATES, exit_code

SWEEP_FILE = "sweep.json"
TABLE_FILE = "sweep.md"
LOG_FILE = "sweep.log"
# Where each point's run, data and tokenizer go is the sweep's to decide.
PLACED_KEYS = ("run.name", "run.out_dir", "data.dir", "tokenizer.path")


# ---------------------------------------------------------------------------------------------
# settings: --set values and listed points, checked like the same keys in a TOML file


def parse_value(dotted: str, raw: str) -> Any:
    """A --set value as a TOML file would hold it. The key's type decides: strings stay as typed
    (time_budget = 5m), numbers and booleans are TOML literals; anything else stays a string, for
    the validator to name the key and the type it wants."""
    section, _, key = dotted.partition(".")
    section_cls = config_module.SECTIONS.get(section)
    default = getattr(section_cls(), key, None) if section_cls else None
    quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'"
    if isinstance(default, (str, list)) and not quoted:
        return raw
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def check_setting(dotted: str, value: Any, where: str, cross_checks: bool = False) -> Any:
    """The value as the config will hold it (an int for a float key becomes a float); BadInput
    "WHERE: [section] key: problem" (with a did-you-mean for a typo) from config.py's validator.
    cross_checks: also the checks that involve other keys, against the defaults (for a key whose
    check is its own, like time_budget's duration format)."""
    if dotted in PLACED_KEYS:
        raise BadInput(f"{where}: {dotted} is set by the sweep itself (each point gets its own run folder; "
                       f"data and tokenizer are shared where the settings allow)")
    section, _, key = dotted.partition(".")
    checked, errors = config_module.validate({section: {key: value}}, where, cross_checks=cross_checks)
    if errors:
        raise BadInput("; ".join(errors))
    return getattr(getattr(checked, section), key)


def parse_set(text: str) -> tuple[str, list[Any]]:
    """`SECTION.KEY=V1,V2,...` -> (SECTION.KEY, checked values)."""
    dotted, equals, raw_values = text.partition("=")
    dotted = dotted.strip()
    if not equals or "." not in dotted:
        raise BadInput(f"--set {text}: use SECTION.KEY=VALUE[,VALUE...], e.g. train.matrix_lr=0.01,0.02")
    raws = [raw.strip() for raw in raw_values.split(",")]
    if not all(raws):
        raise BadInput(f"--set {text}: empty value")
    values = [check_setting(dotted, parse_value(dotted, raw), f"--set {dotted}") for raw in raws]
    texts = [value_text(value) for value in values]
    repeated = sorted({text for text in texts if texts.count(text) > 1})
    if repeated:
        raise BadInput(f"--set {dotted}: value {repeated[0]} given twice")
    return dotted, values


def load_points(path: str | Path) -> list[dict[str, Any]]:
    """A listed set of points: a TOML file of [[point]] tables with SECTION.KEY = value lines,
    e.g.  [[point]]  train.matrix_lr = 0.02  model.depth = 4. Returns one settings dict per point."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{path}: points file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"{path}: cannot read points file: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise BadInput(f"{path}: malformed TOML: {error}") from None
    points = data.get("point")
    extra = sorted(set(data) - {"point"})
    if extra or not isinstance(points, list) or not points or not all(isinstance(p, dict) for p in points):
        raise BadInput(f"{path}: expected [[point]] tables of SECTION.KEY = value lines"
                       + (f", found {', '.join(extra)}" if extra else ""))
    listed = []
    for index, table in enumerate(points, start=1):
        where = f"{path}: point {index}"
        settings: dict[str, Any] = {}
        for section, values in table.items():
            if not isinstance(values, dict):
                raise BadInput(f"{where}: '{section}' is not SECTION.KEY = value")
            for key, value in values.items():
                settings[f"{section}.{key}"] = check_setting(f"{section}.{key}", value, where)
        if not settings:
            raise BadInput(f"{where}: sets nothing")
        listed.append(settings)
    return listed


def expand(axes: dict[str, list[Any]], listed: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the last axis varying fastest; with listed points,
    each listed point crossed with that grid."""
    grid = [dict(zip(axes, combination, strict=True)) for combination in itertools.product(*axes.values())]
    return [{**point, **combination} for point in listed for combination in grid] if listed else grid


# ---------------------------------------------------------------------------------------------
# naming


def value_text(value: Any) -> str:
    """A value as it appears in a folder name: exact (floats by repr), only [A-Za-z0-9._+-]."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, list):
        text = "+".join(Path(item).name or item for item in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def short_keys(keys: list[str]) -> dict[str, str]:
    """SECTION.KEY -> KEY, unless another key of the same name in another section is in play."""
    names = [key.partition(".")[2] for key in keys]
    return {key: name if names.count(name) == 1 else key for key, name in zip(keys, names, strict=True)}


def label(settings: dict[str, Any], shorts: dict[str, str] | None = None) -> str:
    """"matrix_lr0.02-depth4" for {"train.matrix_lr": 0.02, "model.depth": 4}."""
    shorts = shorts or short_keys(list(settings))
    return "-".join(f"{shorts[key]}{value_text(value)}" for key, value in settings.items())


# ---------------------------------------------------------------------------------------------
# the plan


@dataclass
class Point:
    label: str
    settings: dict[str, Any]  # the varying settings, the ones in the name
    config: config_module.Config  # the whole config: run folder, data and tokenizer placed

    @property
    def name(self) -> str:
        return self.config.run.name

    @property
    def run_dir(self) -> Path:
        return self.config.out_dir


@dataclass
class Sweep:
    name: str
    dir: Path
    config_path: Path
    axes: dict[str, list[Any]]
    fixed: dict[str, Any]
    listed: list[dict[str, Any]]
    points: list[Point]


def plan(config_path: str | Path, axes: dict[str, list[Any]], fixed: dict[str, Any] | None = None,
         listed: list[dict[str, Any]] | None = None, name: str | None = None) -> Sweep:
    """Every point's config, validated whole (cross-checks too), with its run folder, data folder
    and tokenizer placed. Settings are checked values (parse_set / load_points / check_setting)."""
    config_path = Path(config_path)
    base = config_module.load(config_path)
    fixed, listed = dict(fixed or {}), list(listed or [])
    if not axes and not listed:
        raise BadInput("nothing to sweep: give --set SECTION.KEY=V1,V2,... or --points FILE")
    for key in fixed:
        if key in axes or any(key in point for point in listed):
            raise BadInput(f"{key}: set both for every point and per point")
    for key in axes:
        if any(key in point for point in listed):
            raise BadInput(f"{key}: set both by --set and in the points file")
    name = name or f"{base.run.name}-sweep"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise BadInput(f"--name {name!r}: use letters, digits and . _ + - (it names folders)")
    sweep_dir = base.out_dir.parent / name
    combinations = expand(axes, listed)
    shorts = short_keys(list(dict.fromkeys(key for settings in combinations for key in settings)))
    points, folders = [], {}
    for settings in combinations:
        point_label = label(settings, shorts)
        run_name = f"{name}-{point_label}"
        if run_name in folders:
            raise BadInput(f"points {folders[run_name]} and {settings} would share the run folder {run_name}")
        folders[run_name] = settings
        overrides = {**fixed, **settings}
        placed = {"run.name": run_name, "run.out_dir": str(sweep_dir.parent / run_name),
                  "data.dir": str(_data_dir(base, sweep_dir, overrides)),
                  "tokenizer.path": str(_tokenizer_path(base, sweep_dir, overrides))}
        config = _apply(base, {**overrides, **placed}, where=f"{config_path} with {point_label}")
        points.append(Point(point_label, settings, config))
    return Sweep(name, sweep_dir, config_path, dict(axes), fixed, listed, points)


def _only(settings: dict[str, Any], sections: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in settings.items() if key.partition(".")[0] in sections}


def _data_dir(base: config_module.Config, sweep_dir: Path, settings: dict[str, Any]) -> Path:
    data_settings = _only(settings, ("data",))
    if not data_settings and base.data.dir:
        return base.data_dir
    return sweep_dir / "-".join(["data"] + ([label(data_settings)] if data_settings else []))


def _tokenizer_path(base: config_module.Config, sweep_dir: Path, settings: dict[str, Any]) -> Path:
    tokenizer_settings = _only(settings, ("data", "tokenizer"))  # a tokenizer is trained on the data
    if not tokenizer_settings and base.tokenizer.path:
        return base.tokenizer_path
    return sweep_dir / ("-".join(["tokenizer"] + ([label(tokenizer_settings)] if tokenizer_settings else []))
                        + ".json")


def _apply(base: config_module.Config, settings: dict[str, Any], where: str) -> config_module.Config:
    data = base.to_dict()
    for dotted, value in settings.items():
        section, _, key = dotted.partition(".")
        data[section][key] = value
    config, errors = config_module.validate(data, where)
    if errors:
        raise BadInput("; ".join(errors))
    config.base_dir = base.base_dir
    return config


# ---------------------------------------------------------------------------------------------
# a point's result, read from its run folder (torch-free: the TUI and the driver both use it)


@dataclass
class PointResult:
    name: str
    label: str
    settings: dict[str, Any]
    run_dir: str
    state: str = "pending"  # pending | running | done | unfinished (has checkpoints: resumable) | failed
    val_bpb: float | None = None  # at the last step, on the val split: the score
    best_val_bpb: float | None = None
    params: int | None = None
    step: int | None = None
    total_steps: int | None = None
    tokens: int | None = None
    seconds: float | None = None  # training wall time (gaps between a stop and a resume left out)
    message: str = ""


def _number(value: Any) -> float | None:
    """A finite number from a run folder's JSON, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_point(point: Point) -> PointResult:
    from workbench.evals.report import wall_seconds

    run_dir = point.run_dir
    result = PointResult(point.name, point.label, point.settings, str(run_dir))
    status = runs.read_status(run_dir)
    status = status if isinstance(status, dict) else {}  # run folders can hold any JSON
    state = runs.effective_state(status or None)
    checkpoint = checkpoint_files.newest(run_dir)
    meta = checkpoint_files.read_meta(checkpoint) if checkpoint else {}
    step, total = meta.get("step"), stages.total_steps(point.config, "pretrain")
    finished = stages.training_state(run_dir, total) == "done"
    if state in LIVE_STATES and status.get("stage") == "pretrain":
        result.state = "running"
    elif finished:
        result.state = "done"
    elif state in ("failed", "crashed"):
        result.state = "failed"
        result.message = status.get("message") or "the worker ended without finishing"
    elif checkpoint is not None:
        result.state = "unfinished"
        at = f" at step {step}" if isinstance(step, int) else ""
        result.message = f"stopped{at} before its last step; running the sweep again resumes it"
    records = runs.read_metrics(run_dir) if result.state != "pending" else []
    pretrain = [record for record in records if record.get("stage") == "pretrain"]
    system = [record for record in pretrain if record.get("kind") == "sys"]
    result.params = int(system[-1]["params"]) if system and _number(system[-1].get("params")) else None
    result.step = step if isinstance(step, int) else status.get("step")
    result.total_steps = total if isinstance(total, int) else None
    result.tokens = meta.get("tokens") if isinstance(meta.get("tokens"), int) else status.get("tokens")
    result.seconds = wall_seconds(pretrain)
    result.best_val_bpb = _number(meta.get("best_val_bpb")) or _number(status.get("best_val_bpb"))
    if finished:
        result.val_bpb = _number(meta.get("val_bpb"))
        if result.val_bpb is None:
            result.message = "no val bpb at the last step (see the run's events)"
    return result


def ranked(results: list[PointResult]) -> list[PointResult]:
    """Scored points best (lowest val bpb) first, then the rest in plan order."""
    scored = sorted((r for r in results if r.val_bpb is not None), key=lambda r: r.val_bpb)
    return scored + [r for r in results if r.val_bpb is None]


# ---------------------------------------------------------------------------------------------
# the results: sweep.json, sweep.md and the terminal table share these rows


def table(results: list[PointResult]) -> tuple[list[str], list[list[str]]]:
    keys = list(dict.fromkeys(key for result in results for key in result.settings))
    shorts = short_keys(keys)
    header = ["#", "run"] + [shorts[key] for key in keys] + ["val bpb", "best", "params", "tokens", "time",
                                                             "state"]
    rows = []
    for rank, result in enumerate(ranked(results), start=1):
        settings = [_cell(result.settings[key]) if key in result.settings else "" for key in keys]
        rows.append([str(rank), result.name, *settings, _bpb(result.val_bpb), _bpb(result.best_val_bpb),
                     _count(result.params), _count(result.tokens), _duration(result.seconds), result.state])
    return header, rows


def _cell(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (bool, list)) else str(value)


def _bpb(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def _count(value: int | None) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _duration(seconds: float | None) -> str:
    return f"{seconds:.1f}s" if seconds is not None and seconds < 60 else runs.format_duration(seconds)


def render_markdown(sweep: Sweep, results: list[PointResult], state: str) -> str:
    header, rows = table(results)
    done = sum(result.state == "done" for result in results)
    fixed = ", ".join(f"{key} = {_cell(value)}" for key, value in sweep.fixed.items())
    lines = [f"# Sweep {sweep.name}", "",
             f"Config `{sweep.config_path.resolve()}`" + (f", for every point: {fixed}" if fixed else "") + ".",
             f"{done} of {len(results)} points finished; the sweep is {state}. Score: val bpb at each run's "
             f"last step, on the held-out (val) split; best first.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    notes = [f"- {result.name}: {result.message}" for result in results if result.message]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def write_results(sweep: Sweep, results: list[PointResult], state: str) -> None:
    """sweep.json (the plan, the driver while it runs, every result best first) and sweep.md."""
    payload = {
        "name": sweep.name,
        "config": str(sweep.config_path.resolve()),
        "axes": sweep.axes,
        "fixed": sweep.fixed,
        "listed": sweep.listed,
        "state": state,
        "driver": {"pid": os.getpid(), "host": _host()} if state == "running" else None,
        "updated": time.time(),
        "points": [dataclasses.asdict(result) for result in ranked(results)],
    }
    runs.atomic_write_text(sweep.dir / SWEEP_FILE, json.dumps(payload, indent=1))
    runs.atomic_write_text(sweep.dir / TABLE_FILE, render_markdown(sweep, results, state))


def _host() -> str:
    return os.uname().nodename if hasattr(os, "uname") else ""


# ---------------------------------------------------------------------------------------------
# the driver


def check_started_with_same_config(point: Point) -> None:
    """A point's run folder that already exists must hold a run of this very config: the base
    config or the fixed settings may have changed since, and its result would then be mislabeled."""
    frozen_path = point.run_dir / "config.toml"
    if not frozen_path.is_file():
        return
    planned = point.config.frozen().to_dict()
    existing = config_module.load(frozen_path).frozen().to_dict()
    differ = [f"{section}.{key}" for section, values in planned.items() for key, value in values.items()
              if existing.get(section, {}).get(key) != value]
    if differ:
        raise BadInput(f"{frozen_path}: this point was started with other settings ({', '.join(differ[:4])} "
                       f"differ): give the sweep another --name, or delete {point.run_dir}")


def check_no_other_driver(sweep: Sweep) -> None:
    info = read_sweep(sweep.dir)
    if info is not None and info.driver_alive and info.driver_pid != os.getpid():
        raise BadInput(f"{sweep.dir}: another sweep driver is running it (pid {info.driver_pid}); "
                       f"wait for it, or stop it first")


def prepare_inputs(point: Point, say: Callable[[str], None] = print) -> None:
    """The point's prepared data and tokenizer, made once and shared (see the module docstring)."""
    cfg = point.config
    if stages.state(cfg, "prepare") != "done":
        from workbench.data.prepare import prepare, summary_line

        say(f"sweep: preparing data for {point.label} -> {cfg.data_dir}")
        say(f"sweep: {summary_line(prepare(cfg))}")
    if stages.state(cfg, "tokenizer") != "done":
        from workbench.tokenizer import train_from_config

        say(f"sweep: training the {cfg.tokenizer.vocab_size}-token tokenizer for {point.label} -> "
            f"{cfg.tokenizer_path}")
        record = train_from_config(cfg)
        say(f"sweep: tokenizer: {record['chars_per_token']:.2f} chars/token")


@dataclass
class _Watched:
    point: Point
    pid: int


def run_sweep(sweep: Sweep, parallel: int = 1, say: Callable[[str], None] = print,
              poll_seconds: float = 0.5) -> list[PointResult]:
    """Run every point that is not finished yet (see the module docstring); returns the results,
    best first. Ctrl+C (KeyboardInterrupt) leaves running points running and is re-raised."""
    if parallel < 1:
        raise BadInput(f"--parallel {parallel}: must be at least 1")
    for point in sweep.points:
        check_started_with_same_config(point)
    check_no_other_driver(sweep)
    results = {point.name: read_point(point) for point in sweep.points}
    queue = [point for point in sweep.points if results[point.name].state != "done"]
    if len(queue) < len(sweep.points):
        say(f"sweep: {len(sweep.points) - len(queue)} of {len(sweep.points)} points already finished: skipped")
    env = dict(os.environ)
    if parallel > 1 and "OMP_NUM_THREADS" not in env:  # N runs at once share the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    watched: list[_Watched] = []
    sweep.dir.mkdir(parents=True, exist_ok=True)
    write_results(sweep, list(results.values()), "running")
    try:
        while queue or watched:
            while queue and len(watched) < parallel:
                point = queue.pop(0)
                watched.append(_Watched(point, _start(point, results[point.name], env, say)))
                results[point.name].state = "running"
                write_results(sweep, list(results.values()), "running")
            time.sleep(poll_seconds)
            for item in list(watched):
                code = exit_code(item.pid)
                if code is None:
                    continue
                watched.remove(item)
                result = read_point(item.point)
                if result.state == "pending":  # it failed before its first step (its log says why)
                    result.state = "failed"
                    result.message = (f"the worker ended (exit code {code}) before training; "
                                      f"see {item.point.run_dir / 'train.log'}")
                results[item.point.name] = result
                say(f"sweep: {item.point.name} {result.state}" + (f", val bpb {result.val_bpb:.4f}"
                                                                  if result.val_bpb is not None else "")
                    + (f" ({result.message})" if result.message else ""))
                write_results(sweep, list(results.values()), "running")
    except BaseException:
        for item in watched:  # what a worker did so far, as the folder says now
            results[item.point.name] = read_point(item.point)
        write_results(sweep, list(results.values()), "interrupted")
        if watched:
            say(f"sweep: the driver stopped; {', '.join(item.point.name for item in watched)} go on running "
                f"(`picochat stop RUN` stops one); run the same sweep again to continue")
        raise
    final = list(results.values())
    write_results(sweep, final, "done" if all(r.state == "done" for r in final) else "incomplete")
    return ranked(final)


def _start(point: Point, result: PointResult, env: dict[str, str], say: Callable[[str], None]) -> int:
    """Start the point's worker (or find the one already running); returns its pid."""
    status = runs.read_status(point.run_dir) or {}
    if result.state == "running":  # started by an earlier driver: wait for it, never start a twin
        say(f"sweep: {point.name} is already running (pid {status.get('pid')}): waiting for it")
        return int(status["pid"])
    prepare_inputs(point, say)
    resume = bool(runs.list_checkpoints(point.run_dir))
    runs.freeze_config(point.run_dir, point.config.frozen().to_toml())  # the worker keeps this copy
    argv = runs.picochat_command("pretrain", str(point.run_dir / "config.toml"), *(["--resume"] if resume else []))
    pid = runs.spawn_detached(argv, point.run_dir / "train.log", env=env)
    say(f"sweep: {'resumed' if resume else 'started'} {point.name} (pid {pid}); log {point.run_dir / 'train.log'}")
    return pid


# ---------------------------------------------------------------------------------------------
# reading sweeps back (the TUI's Runs screen)


@dataclass
class SweepInfo:
    name: str
    path: Path
    state: str  # running (its driver is alive) | done | incomplete | interrupted | stopped (driver gone)
    points: list[dict[str, Any]] = field(default_factory=list)  # sweep.json's results, best first
    driver_pid: int | None = None
    driver_alive: bool = False

    @property
    def run_names(self) -> list[str]:
        return [point["name"] for point in self.points]

    @property
    def done(self) -> int:
        return sum(point.get("state") == "done" for point in self.points)

    @property
    def best(self) -> dict[str, Any] | None:
        scored = [point for point in self.points if _number(point.get("val_bpb")) is not None]
        return min(scored, key=lambda point: point["val_bpb"]) if scored else None


def read_sweep(sweep_dir: str | Path) -> SweepInfo | None:
    """sweep.json of a folder, or None when there is none or it cannot be read (never raises)."""
    sweep_dir = Path(sweep_dir)
    try:
        data = json.loads((sweep_dir / SWEEP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        return None
    points = [point for point in data["points"]  # a point is a sibling folder: a plain name, nothing else
              if isinstance(point, dict) and isinstance(point.get("name"), str)
              and point["name"] not in ("", ".", "..") and Path(point["name"]).name == point["name"]]
    driver = data.get("driver") if isinstance(data.get("driver"), dict) else {}
    pid = driver.get("pid") if isinstance(driver.get("pid"), int) else None
    alive = driver.get("host", "") in ("", _host()) and runs.pid_alive(pid)
    state = str(data.get("state", "unknown"))
    if state == "running" and not alive:
        state = "stopped"
    return SweepInfo(str(data.get("name") or sweep_dir.name), sweep_dir, state, points, pid, alive)


def grouped(infos: list[runs.RunInfo], sweeps: list[SweepInfo]) -> list[tuple[int, SweepInfo | runs.RunInfo]]:
    """(depth, sweep or run) in the runs' order (newest first), except that a sweep's runs come
    together (best first, at depth 1) right after the sweep, where its newest run would be; a sweep
    with no run folder yet comes first. `picochat runs` and the TUI's Runs screen list them so."""
    by_name = {info.name: info for info in infos}
    member_of = {name: found for found in sweeps for name in found.run_names}
    entries: list[tuple[int, SweepInfo | runs.RunInfo]] = [
        (0, found) for found in sweeps if not any(name in by_name for name in found.run_names)]
    shown: set[Path] = set()
    for info in infos:
        found = member_of.get(info.name)
        if found is None:
            entries.append((0, info))
        elif found.path not in shown:
            shown.add(found.path)
            entries.append((0, found))
            entries.extend((1, by_name[name]) for name in found.run_names if name in by_name)
    return entries


def list_sweeps(runs_dir: str | Path) -> list[SweepInfo]:
    """Every sweep folder (one with a readable sweep.json) under runs_dir, by name."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = (read_sweep(child) for child in sorted(runs_dir.iterdir()) if (child / SWEEP_FILE).is_file())
    return [info for info in found if info is not None]
