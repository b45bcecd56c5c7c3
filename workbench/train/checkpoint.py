"""Checkpoints: one folder per saved step, safetensors for tensors and JSON for everything else.

    RUN/checkpoints/step_000300/
        model.safetensors      the model's learned weights
        optimizer.safetensors  optimizer state (optional; needed to resume exactly)
        config.json            the run's Config.to_dict() (paths absolute)
        tokenizer.json         the tokenizer, so a checkpoint folder is self-contained
        meta.json              {format_version, step, tokens, stage, loader_state, rng_states,
                                val_bpb, quantization?, params, created, ...}

A checkpoint is written into `.tmp-step_000300` and renamed when complete, so a crash or a kill -9
at any moment leaves every earlier checkpoint intact and never a half-written one under a real
name. No pickle: `torch.load` is never used.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench import config as config_module
from workbench.config import Config
from workbench.errors import BadInput
from workbench.runs import list_checkpoints
from workbench.tokenizer import Tokenizer
from workbench.train.common import decode_rng_states, unwrap

FORMAT_VERSION = 1
REQUIRED_FILES = ("model.safetensors", "config.json", "tokenizer.json", "meta.json")
TEMP_PREFIX = ".tmp-"


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def first_line(error: BaseException) -> str:
    """An exception as one short line for a BadInput message."""
    lines = str(error).splitlines()
    return lines[0][:200] if lines else type(error).__name__


# ---------------------------------------------------------------------------------------------
# saving


def _fsync_path(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _plain_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two entries sharing memory (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            tensor = tensor.clone()
        seen.add(key)
        out[name] = tensor
    return out


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file(_plain_tensors(tensors), str(path), metadata=metadata)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def _write_checkpoint_files(folder: Path, step: int, model: torch.nn.Module, config: Config,
                            tokenizer: Tokenizer, optimizers, meta: dict[str, Any] | None,
                            gathered: tuple[dict, dict | None] | None) -> None:
    model = unwrap(model)
    weights, optimizer_state = gathered or (model.state_dict(), None)
    save_tensors(weights, folder / "model.safetensors")
    if optimizer_state is None and optimizers is not None:
        optimizer_state = optimizers.state_tensors()
    if optimizer_state is not None:
        save_tensors(optimizer_state, folder / "optimizer.safetensors")
    write_json(folder / "config.json", config.to_dict())
    (folder / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    full_meta = {"format_version": FORMAT_VERSION, "step": step, "tokens": 0, "stage": "pretrain",
                 "val_bpb": None, "params": sum(p.numel() for p in model.parameters()),
                 "created": time.time()}
    full_meta.update(meta or {})
    full_meta["step"] = step
    write_json(folder / "meta.json", full_meta)  # written last: its presence marks a complete folder
    for child in folder.iterdir():
        _fsync_path(child)
    _fsync_path(folder)


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, config: Config,
                    tokenizer: Tokenizer, optimizers=None, meta: dict[str, Any] | None = None,
                    keep_last: int = 3, gathered: tuple[dict, dict | None] | None = None) -> Path:
    """Write RUN/checkpoints/step_NNNNNN atomically and return its path. An existing checkpoint of
    the same step is replaced; beyond keep_last (0 = keep all) the oldest ones are removed. A write
    that fails (a full disk) removes the partial temporary folder and raises BadInput: every
    checkpoint saved before stays as it was. gathered: (weights, optimizer tensors) already
    gathered whole from an FSDP model (every rank gathers, rank 0 saves), the same files."""
    from safetensors import SafetensorError

    folder = Path(run_dir) / "checkpoints"
    final = folder / checkpoint_name(step)
    temporary = folder / f"{TEMP_PREFIX}{final.name}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir()
        _write_checkpoint_files(temporary, step, model, config, tokenizer, optimizers, meta, gathered)
    except (OSError, SafetensorError) as error:  # safetensors reports a full disk as its own error
        shutil.rmtree(temporary, ignore_errors=True)
        reason = (error.strerror if isinstance(error, OSError) else None) or first_line(error)
        raise BadInput(f"{final}: could not be saved ({reason}); the checkpoints saved before are "
                       f"intact") from None

    if final.exists():  # same step saved again (a "save" command at the last step, say)
        old = folder / f"{TEMP_PREFIX}old-{final.name}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(temporary, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temporary, final)
    _fsync_path(folder)

    if keep_last > 0:
        for stale in list_checkpoints(run_dir)[:-keep_last]:
            if stale != final:
                # rename first: a kill mid-delete then leaves a hidden temporary folder, never a
                # half-deleted checkpoint that still looks complete
                trash = folder / f"{TEMP_PREFIX}trash-{stale.name}"
                shutil.rmtree(trash, ignore_errors=True)
                os.replace(stale, trash)
                shutil.rmtree(trash, ignore_errors=True)
    return final


def update_meta(checkpoint_dir: str | Path, **fields: Any) -> None:
    """Add fields to a checkpoint's meta.json (e.g. val_bpb, measured after the save), atomically."""
    path = Path(checkpoint_dir) / "meta.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta.update(fields)
    temporary = path.with_name(f".meta.json.{os.getpid()}.tmp")
    try:
        write_json(temporary, meta)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # gone after the rename; after a failed write, half of it


# ---------------------------------------------------------------------------------------------
# finding and loading


def is_checkpoint_dir(path: Path) -> bool:
    return path.is_dir() and (path / "meta.json").exists() and (path / "model.safetensors").exists()


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
    run_dir = path.parent if path.name == "checkpoints" else path
    found = list_checkpoints(run_dir)
    if not found:
        raise BadInput(f"{path}: no checkpoints here (train one first, e.g. `picochat pretrain CONFIG`)")
    return found[-1]


def guard_run_folder(run_dir: str | Path, stage: str, resume: bool, check_running: bool = True,
                     take_lock: bool = False) -> Path | None:
    """Before a training stage starts in run_dir: refuse when another worker runs there, or when
    checkpoints exist and resume is off (never overwrite a run silently). The worker itself passes
    take_lock: it holds the run folder's lock from here on (the launcher of a detached worker only
    checks it), and repairs what a kill left half-done (recover_interrupted_saves).
    Returns the newest checkpoint to resume from (None: start fresh). A newer step folder that
    cannot be resumed from (no meta.json, files missing) is refused, never skipped: resuming from
    an older checkpoint would later overwrite it."""
    from workbench import runs

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
    checkpoints = list_checkpoints(run_dir)
    newest = checkpoints[-1] if checkpoints else None
    newest_step = _step_number(newest) if newest else -1
    broken = [folder for folder in _step_folders(run_dir) if _step_number(folder) > newest_step]
    if (newest or broken) and not resume:
        name = (broken or checkpoints)[-1].name
        raise BadInput(f"{run_dir}: already has checkpoints (newest {name}); continue it with "
                       f"--resume, or choose another [run] name or out_dir")
    if broken:
        raise BadInput(_why_not_resumable(broken[-1], newest))
    return newest


def _step_number(folder: Path) -> int:
    """N of a step_N folder; -1 for any other name."""
    digits = folder.name.removeprefix("step_")
    return int(digits) if folder.name.startswith("step_") and digits.isascii() and digits.isdigit() else -1


def _step_folders(run_dir: Path) -> list[Path]:
    """Every step_N folder under checkpoints/, complete or not, by step."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((entry for entry in folder.iterdir() if _step_number(entry) >= 0 and entry.is_dir()),
                  key=_step_number)


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


@dataclass
class Checkpoint:
    path: Path
    model: torch.nn.Module
    config: Config
    tokenizer: Tokenizer
    meta: dict[str, Any]
    optimizer_tensors: dict[str, torch.Tensor] | None = None

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))


def read_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a truncated or corrupt file becomes BadInput naming it."""
    from safetensors.torch import load_file

    if not path.exists():
        raise BadInput(f"{path}: missing from the checkpoint")
    try:
        return load_file(str(path), device=str(device))
    except Exception as error:  # SafetensorError, OSError: truncated, corrupt, not safetensors
        raise BadInput(f"{path}: corrupt or truncated safetensors file ({first_line(error)})") from None


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


# meta.json fields by type, checked where present: a hand-edited or damaged meta.json is one line
# naming the field, never a KeyError or ValueError halfway through a resume or an eval
META_COUNTS = ("format_version", "step", "tokens", "total_steps")  # whole numbers >= 0
META_NUMBERS = ("val_bpb", "best_val_bpb", "lr_scale", "time_budget")
META_TEXTS = ("stage", "quantization", "init_from", "task")
META_OBJECTS = ("loader_state", "sft_state", "rng_states")


def check_meta(path: Path, meta: Any, resume: bool = False) -> dict[str, Any]:
    """meta.json's object with its known fields checked (BadInput naming the file and the field).
    resume: also what --resume needs, the step and RNG states that restore_rng_states accepts."""
    where = path / "meta.json"
    if not isinstance(meta, dict):
        raise BadInput(f"{where}: must be a JSON object")

    def wrong(field: str, what: str) -> BadInput:
        return BadInput(f"{where}: {field}: {what}, not {json.dumps(meta[field])[:40]}")

    for field in META_COUNTS:
        if meta.get(field) is not None and not (type(meta[field]) is int and meta[field] >= 0):
            raise wrong(field, "must be a whole number >= 0")
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
    if resume:
        if meta.get("step") is None:
            raise BadInput(f"{where}: step: missing, so training cannot resume from this checkpoint")
        try:
            decode_rng_states(meta.get("rng_states"))
        except ValueError as error:
            raise BadInput(f"{where}: rng_states: {error}") from None
    return meta


def check_finite(path: Path, tensors: dict[str, torch.Tensor], what: str) -> None:
    """NaN or inf anywhere would load silently and poison every output: refuse, naming the tensor."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BadInput(f"{path}: non-finite {what} in {name} (NaN or inf; the run diverged before this save?)")


def check_shapes(path: Path, model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                 vocab_size: int) -> None:
    """The file's tensors must be exactly the model's: same names, same shapes. A mismatch in the
    vocabulary dimension is reported as a tokenizer mismatch, the rest as a config mismatch."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
        raise BadInput(f"{path}: weights do not match config.json's [model] ({'; '.join(parts)})")
    for name, shape in expected.items():
        if found[name] == shape:
            continue
        if len(shape) == len(found[name]):
            differing = [i for i, (a, b) in enumerate(zip(shape, found[name], strict=True)) if a != b]
            if len(differing) == 1 and shape[differing[0]] == vocab_size:
                raise BadInput(f"{path}: vocabulary size {found[name][differing[0]]} in the weights, but "
                               f"tokenizer.json has {vocab_size} tokens ({name})")
        raise BadInput(f"{path}: {name} has shape {list(found[name])} but config.json's [model] "
                       f"makes it {list(shape)}")


def load_checkpoint(spec: str | Path, device: str | torch.device = "cpu",
                    with_optimizer: bool = False) -> Checkpoint:
    """Load and validate a checkpoint (a folder, or a run folder -> its newest). The model comes
    back on `device` in eval mode. with_optimizer: what a resume needs, the optimizer tensors and
    a meta.json with the step and valid RNG states. Without with_optimizer a folder with no
    meta.json loads too (meta {}), with a one-line warning on stderr. Every problem is a BadInput
    naming the file."""
    from workbench.model import build_model

    path = resolve_checkpoint(spec)
    for name in REQUIRED_FILES:
        if not (path / name).exists() and not (name == "meta.json" and not with_optimizer):
            raise BadInput(f"{path / name}: missing from the checkpoint"
                           + (", so training cannot resume from it" if name == "meta.json" else ""))
    has_meta = (path / "meta.json").exists()
    # without it: weights + config + tokenizer, as other tools ship a model; usable, its history unknown
    meta = check_meta(path, read_json(path / "meta.json"), resume=with_optimizer) if has_meta else {}
    config = read_checkpoint_config(path)
    tokenizer = Tokenizer.from_file(path / "tokenizer.json")
    model = build_model(config.model, tokenizer.vocab_size)

    if meta.get("quantization") == "int8":
        from workbench.engine.quantize import load_int8_state

        model = load_int8_state(model, path) or model
    else:
        tensors = read_tensors(path / "model.safetensors")
        check_shapes(path / "model.safetensors", model, tensors, tokenizer.vocab_size)
        model.load_state_dict(tensors, strict=True)
    check_finite(path / "model.safetensors", model.state_dict(), "weights")
    model.to(device)
    model.eval()

    optimizer_tensors = None
    if with_optimizer:
        optimizer_path = path / "optimizer.safetensors"
        if not optimizer_path.exists():
            raise BadInput(f"{optimizer_path}: missing, so this checkpoint cannot be resumed exactly")
        optimizer_tensors = read_tensors(optimizer_path)
        check_finite(optimizer_path, optimizer_tensors, "values")
    if not has_meta:  # said once the folder has loaded: a refusal stays one line
        print(f"warning: {path}: no meta.json; loaded its weights, config and tokenizer (step, stage and "
              f"training history unknown)", file=sys.stderr)
    return Checkpoint(path=path, model=model, config=config, tokenizer=tokenizer, meta=meta,
                      optimizer_tensors=optimizer_tensors)
