"""Checkpoints as models: save a model's tensors into a checkpoint folder and load them back,
float or INT8. The folder's layout, finding it and its JSON files are workbench.checkpoint_files
(no torch there).

A checkpoint is written into `.tmp-step_000300` and renamed when complete, so a crash or a kill -9
at any moment leaves every earlier checkpoint intact and never a half-written one under a real
name. No pickle: `torch.load` is never used, tensors are safetensors only.

INT8 checkpoints (`picochat quantize`): every nn.Linear's weight is stored int8 with one float32
scale per output channel (`NAME.weight`, `NAME.weight_scale`; workbench.int8), meta.json says
quantization = "int8", and load_checkpoint rebuilds the model through load_int8_state.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.checkpoint_files import (
    FORMAT_VERSION,
    REQUIRED_FILES,
    TEMP_PREFIX,
    check_meta,
    checkpoint_name,
    int8_copy_path,
    read_checkpoint_config,
    read_json,
    resolve_checkpoint,
    write_json,
)
from workbench.config import Config
from workbench.errors import BadInput, first_line
from workbench.files import fsync_path, replace_folder
from workbench.int8 import int8_layout, quantize_model
from workbench.runs import list_checkpoints
from workbench.tokenizer import Tokenizer
from workbench.train.common import decode_rng_states, unwrap

# ---------------------------------------------------------------------------------------------
# saving


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
        fsync_path(child)
    fsync_path(folder)


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

    replace_folder(temporary, final)  # the same step may be saved again (a "save" at the last step)
    fsync_path(folder)

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


# ---------------------------------------------------------------------------------------------
# loading


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


def check_rng_states(path: Path, meta: dict[str, Any]) -> None:
    """The RNG states a resume restores must decode (BadInput naming meta.json otherwise)."""
    try:
        decode_rng_states(meta.get("rng_states"))
    except ValueError as error:
        raise BadInput(f"{path / 'meta.json'}: rng_states: {error}") from None


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


def load_int8_state(model: torch.nn.Module, checkpoint_path) -> torch.nn.Module:
    """Turn a freshly built float model into the INT8 model stored at checkpoint_path (a folder
    with model.safetensors of int8 weights and scales). Used by load_checkpoint."""
    path = Path(checkpoint_path) / "model.safetensors"
    int8_layout(model)
    tensors = read_tensors(path)
    check_shapes(path, model, tensors, getattr(model, "vocab_size", -1))
    expected = model.state_dict()
    for name, tensor in tensors.items():
        if tensor.dtype != expected[name].dtype and not (tensor.is_floating_point() and expected[name].is_floating_point()):
            raise BadInput(f"{path}: {name} is {tensor.dtype}, an INT8 checkpoint stores "
                           f"{expected[name].dtype} there")
    model.load_state_dict(tensors, strict=True)
    return model


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
    if with_optimizer:
        check_rng_states(path, meta)
    config = read_checkpoint_config(path)
    tokenizer = Tokenizer.from_file(path / "tokenizer.json")
    model = build_model(config.model, tokenizer.vocab_size)

    if meta.get("quantization") == "int8":
        model = load_int8_state(model, path)
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


# ---------------------------------------------------------------------------------------------
# the INT8 copy


def quantize_checkpoint(spec, out: str | Path | None = None) -> Path:
    """Write an INT8 copy of a checkpoint (atomically: a temporary folder renamed at the end), by
    default to RUN/int8/step_N."""
    checkpoint = load_checkpoint(spec, device="cpu")
    if checkpoint.meta.get("quantization") == "int8":
        raise BadInput(f"{checkpoint.path}: already an INT8 checkpoint")
    model = quantize_model(checkpoint.model)
    out = Path(out) if out else int8_copy_path(checkpoint.path)
    temporary = out.with_name(f"{TEMP_PREFIX}{out.name}")
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    save_tensors(model.state_dict(), temporary / "model.safetensors", metadata={"quantization": "int8"})
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(checkpoint.path / name, temporary / name)
    meta = {key: value for key, value in checkpoint.meta.items() if key not in ("loader_state", "rng_states")}
    meta.update(quantization="int8", quantized_from=str(checkpoint.path.resolve()), created=time.time())
    write_json(temporary / "meta.json", meta)
    if out.exists():
        shutil.rmtree(out)
    os.replace(temporary, out)
    return out
