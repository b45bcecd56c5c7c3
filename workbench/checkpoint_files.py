"""A checkpoint folder as files: names, finding, the run-folder guard, and its JSON files read and
written. No torch here (the TUI, serve's model card, speedrun and report read checkpoints through
this module); workbench.checkpoint saves and loads the tensors.

    RUN/checkpoints/step_000300/
        model.safetensors      the model's learned weights
        optimizer.safetensors  optimizer state (optional; needed to resume exactly)
        config.json            the run's Config.to_dict() (paths absolute)
        tokenizer.json         the tokenizer, so a checkpoint folder is self-contained
        meta.json              {format_version, step, tokens, stage, loader_state, rng_states,
                                val_bpb, quantization?, params, created, ...}
        evals.json             {task: result} from `picochat eval` (optional)
    RUN/int8/step_000300/      an INT8 copy (`picochat quantize`): not under checkpoints/, so
                               training never resumes from it

Two kinds of readers: `read_meta`, `read_config` and `read_evals` never fail (a missing or broken
file reads as {}, a known meta field of the wrong type as missing), for screens and summaries;
`read_json`, `check_meta` and `read_checkpoint_config` refuse a broken file with BadInput naming
it, for loading a model or resuming a run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from workbench import config as config_module
from workbench import runs
from workbench.config import Config
from workbench.errors import BadInput
from workbench.files import atomic_write_text

FORMAT_VERSION = 1
REQUIRED_FILES = ("model.safetensors", "config.json", "tokenizer.json", "meta.json")
TEMP_PREFIX = ".tmp-"

# meta.json fields by type, checked where present: a hand-edited or damaged meta.json is one line
# naming the field, never a KeyError or ValueError halfway through a resume or an eval
# whole numbers from 0 to a bound: the config's (steps) and what its bounds allow (tokens, steps
# times the largest batch), so a step of 10**30 is a damaged file, not a run to resume
META_COUNTS = {"format_version": config_module.MAX_STEPS, "step": config_module.MAX_STEPS,
               "total_steps": config_module.MAX_STEPS,
               "tokens": config_module.MAX_STEPS * config_module.MAX_BATCH_ROWS * config_module.MAX_SEQ_LEN}
META_NUMBERS = ("val_bpb", "best_val_bpb", "lr_scale", "time_budget")
META_TEXTS = ("stage", "quantization", "init_from", "task")
META_OBJECTS = ("loader_state", "sft_state", "rng_states")


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def newest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder, None when it has none."""
    found = runs.list_checkpoints(run_dir)
    return found[-1] if found else None


def with_int8_copies(run_dir: str | Path) -> list[Path]:
    """A run's checkpoints, oldest first (those without meta.json too: they load), then the INT8
    copies `picochat quantize` wrote to RUN/int8/step_N (runs.list_checkpoints lists only the
    ones training can continue from)."""
    found = runs.list_checkpoints(run_dir, bare=True)
    int8 = Path(run_dir) / "int8"
    if int8.is_dir():
        found.extend(sorted(p for p in int8.iterdir()
                            if p.is_dir() and p.name.startswith("step_") and (p / "meta.json").exists()))
    return found


def int8_copy_path(checkpoint: Path) -> Path:
    """Where `picochat quantize` puts a checkpoint's INT8 copy: RUN/int8/step_N for a run's
    checkpoint, else a sibling folder NAME-int8."""
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "int8" / checkpoint.name
    return checkpoint.with_name(checkpoint.name + "-int8")


def checkpoint_label(checkpoint: str | Path) -> str:
    """A checkpoint's name without a path of this machine: RUN/step_N, RUN/int8/step_N for an INT8
    copy, or a checkpoint folder outside a run (a shipped model) by its own name."""
    where = Path(checkpoint).resolve()  # given as "." or "nometa": the real folder names
    if where.parent.name == "checkpoints":
        return f"{where.parent.parent.name}/{where.name}"
    if where.parent.name == "int8":
        return f"{where.parent.parent.name}/int8/{where.name}"
    return where.name


def resolve_checkpoint(spec: str | Path) -> Path:
    """A checkpoint folder as is; a run folder (or its checkpoints/ folder) -> its newest
    checkpoint. BadInput when there is none."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise BadInput(f"{path}: no such checkpoint or run folder")
    if not path.is_dir():
        raise BadInput(f"{path}: not a folder (give a checkpoint folder or a run folder)")
    if (path / "meta.json").exists() or (path / "model.safetensors").exists():
        return path
    found = newest(path.parent if path.name == "checkpoints" else path)
    if found is None:
        raise BadInput(f"{path}: no checkpoints here (train one first, e.g. `picochat pretrain CONFIG`)")
    return found


# ---------------------------------------------------------------------------------------------
# readers that never fail: screens, summaries, the model card


def _is_count(value: Any, field: str) -> bool:
    return type(value) is int and 0 <= value <= META_COUNTS[field]


def _fits(field: str, value: Any) -> bool:
    """Whether a meta.json field holds what its kind does (a field of no known kind: always)."""
    if field in META_COUNTS:
        return _is_count(value, field)
    if field in META_NUMBERS:
        return runs.is_number(value)
    if field in META_TEXTS:
        return isinstance(value, str)
    return field not in META_OBJECTS or isinstance(value, dict)


def read_meta(checkpoint: str | Path) -> dict[str, Any]:
    """meta.json as a dict; {} when missing or broken, a known field of the wrong type (or a count
    out of bounds) left out."""
    meta = runs.read_json_object(Path(checkpoint) / "meta.json") or {}
    return {field: value for field, value in meta.items() if value is None or _fits(field, value)}


def read_config(checkpoint: str | Path) -> dict[str, Any]:
    """config.json as a plain dict (unvalidated: read_checkpoint_config for a Config); {} when
    missing or broken."""
    return runs.read_json_object(Path(checkpoint) / "config.json") or {}


def read_evals(checkpoint: str | Path) -> dict[str, Any]:
    """evals.json ({task: result}); {} when missing or broken."""
    return runs.read_json_object(Path(checkpoint) / "evals.json") or {}


# ---------------------------------------------------------------------------------------------
# strict readers: what loading a model or resuming a run relies on


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{path}: missing from the checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInput(f"{path}: unreadable ({error})") from None
    except RecursionError:
        raise BadInput(f"{path}: unreadable (nested too deeply)") from None


def read_checkpoint_config(path: Path) -> Config:
    """The Config a checkpoint folder was trained with (its config.json); BadInput names the file."""
    raw_config = read_json(path / "config.json")
    if not isinstance(raw_config, dict):
        raise BadInput(f"{path / 'config.json'}: must be a JSON object")
    try:
        return config_module.from_dict(raw_config)
    except BadInput as error:
        raise BadInput(f"{path / 'config.json'}: {error}") from None


def check_meta(path: Path, meta: Any, resume: bool = False) -> dict[str, Any]:
    """meta.json's object with its known fields checked (BadInput naming the file and the field).
    resume: also the step that --resume needs (workbench.checkpoint checks the RNG states)."""
    where = path / "meta.json"
    if not isinstance(meta, dict):
        raise BadInput(f"{where}: must be a JSON object")

    def wrong(field: str, what: str) -> BadInput:
        return BadInput(f"{where}: {field}: {what}, not {json.dumps(meta[field])[:40]}")

    for field, most in META_COUNTS.items():
        if meta.get(field) is not None and not _is_count(meta[field], field):
            raise wrong(field, f"must be a whole number from 0 to {most:,}")
    for field in META_NUMBERS:
        if meta.get(field) is not None and type(meta[field]) not in (int, float):
            raise wrong(field, "must be a number")
    for field in META_TEXTS:
        if meta.get(field) is not None and not isinstance(meta[field], str):
            raise wrong(field, "must be text")
    for field in META_OBJECTS:
        if meta.get(field) is not None and not isinstance(meta[field], dict):
            raise wrong(field, "must be an object")
    if (meta.get("format_version") or FORMAT_VERSION) > FORMAT_VERSION:
        raise BadInput(f"{where}: format_version {meta['format_version']} is newer than this picochat reads "
                       f"({FORMAT_VERSION}); update picochat")
    if resume and meta.get("step") is None:
        raise BadInput(f"{where}: step: missing, so training cannot resume from this checkpoint")
    return meta


# ---------------------------------------------------------------------------------------------
# writers of the JSON files beside the weights


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def update_meta(checkpoint_dir: str | Path, **fields: Any) -> None:
    """Add fields to a checkpoint's meta.json (e.g. val_bpb, measured after the save), atomically."""
    path = Path(checkpoint_dir) / "meta.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta.update(fields)
    write_json(path, meta)


def merge_evals(checkpoint: Path, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """<checkpoint>/evals.json: earlier results kept, these tasks replaced."""
    merged = read_evals(checkpoint)
    merged.update(results)
    atomic_write_text(checkpoint / "evals.json", json.dumps(runs._json_safe(merged), indent=1))
    return merged


# ---------------------------------------------------------------------------------------------
# the run folder before a training stage starts


def guard_run_folder(run_dir: str | Path, stage: str, resume: bool, check_running: bool = True,
                     take_lock: bool = False) -> Path | None:
    """Before a training stage starts in run_dir: refuse when another worker runs there, or when
    checkpoints exist and resume is off (never overwrite a run silently). The worker itself passes
    take_lock: it holds the run folder's lock from here on (the launcher of a detached worker only
    checks it), and repairs what a kill left half-done (recover_interrupted_saves).
    Returns the newest checkpoint to resume from (None: start fresh). A newer step folder that
    cannot be resumed from (no meta.json, files missing) is refused, never skipped: resuming from
    an older checkpoint would later overwrite it."""
    run_dir = Path(run_dir)
    if check_running:
        runs.lock_run_folder(run_dir, hold=take_lock)
    status = runs.read_status(run_dir) if check_running else None
    if (status and status.get("stage") == stage
            and runs.effective_state(status) in ("starting", "running", "paused", "stopping")):
        raise BadInput(f"{run_dir}: a {stage} worker is already running there (pid {status.get('pid')}); "
                       f"stop it first with `picochat stop {run_dir}`")
    if check_running and take_lock:
        recover_interrupted_saves(run_dir)
    checkpoints = runs.list_checkpoints(run_dir)
    newest_found = checkpoints[-1] if checkpoints else None
    newest_step = step_number(newest_found) if newest_found else -1
    broken = [folder for folder in _step_folders(run_dir) if step_number(folder) > newest_step]
    if (newest_found or broken) and not resume:
        name = (broken or checkpoints)[-1].name
        raise BadInput(f"{run_dir}: already has checkpoints (newest {name}); continue it with "
                       f"--resume, or choose another [run] name or out_dir")
    if broken:
        raise BadInput(_why_not_resumable(broken[-1], newest_found))
    return newest_found


def step_number(folder: Path) -> int:
    """N of a step_N folder; -1 for any other name."""
    digits = folder.name.removeprefix("step_")
    return int(digits) if folder.name.startswith("step_") and digits.isascii() and digits.isdigit() else -1


def _step_folders(run_dir: Path) -> list[Path]:
    """Every step_N folder under checkpoints/, complete or not, by step."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((entry for entry in folder.iterdir() if step_number(entry) >= 0 and entry.is_dir()),
                  key=step_number)


def _why_not_resumable(folder: Path, fallback: Path | None) -> str:
    missing = [name for name in REQUIRED_FILES if not (folder / name).exists()]
    instead = f"resume from {fallback.name}" if fallback else "start over"
    if missing == ["meta.json"]:
        return (f"{folder}: has weights but no meta.json, so training cannot resume from it; delete it (or "
                f"move it out of checkpoints/) to {instead}")
    return f"{folder}: incomplete checkpoint (missing {', '.join(missing)}); delete it to {instead}"


def recover_interrupted_saves(run_dir: str | Path) -> list[str]:
    """Undo what a kill -9 in the middle of save_checkpoint left behind; only the worker holding
    the run folder's lock may call it. A re-save killed between its two renames left the complete
    checkpoint only as `.tmp-old-step_N`: it gets its name back. Other temporary folders (a
    half-written `.tmp-step_N`, a half-deleted `.tmp-trash-step_N`) are removed.
    Returns the names recovered."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    recovered = []
    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        name = entry.name.removeprefix(f"{TEMP_PREFIX}old-")
        if name != entry.name and entry.is_dir() and not (folder / name).exists():
            try:
                os.replace(entry, folder / name)  # complete: it was renamed away whole
            except OSError as error:
                raise BadInput(f"{entry}: cannot restore it as {name} ({error.strerror or error})") from None
            recovered.append(name)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return recovered
