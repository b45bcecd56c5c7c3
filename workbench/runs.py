"""The run folder: the contract between worker processes and every reader (CLI, TUI).

    runs/NAME/
      config.toml      frozen copy of the config the run started with
      status.json      state, pid, stage, step, tokens, eta, heartbeat; replaced atomically
      metrics.jsonl    append-only records {"t", "step", "kind": train|eval|sample|event|sys|progress, ...}
      train.log        worker stdout/stderr (detached workers)
      control/         command files (stop, pause, resume, save) the worker applies at step boundaries
      checkpoints/step_000300/  model.safetensors config.json tokenizer.json optimizer.safetensors meta.json

Workers write through RunWriter; readers use read_status / read_metrics / MetricsTail / list_runs.
This module never imports torch: the TUI and `picochat runs` start instantly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import BadInput
from workbench.files import atomic_write_text
from workbench.input_files import open_regular, parse_json

STATES = ("starting", "running", "paused", "stopping", "stopped", "done", "failed")  # stopped: asked to, resumable
LIVE_STATES = ("starting", "running", "paused", "stopping", "stalled")  # effective states of a worker at work
CONTROL_COMMANDS = ("stop", "pause", "resume", "save")
STALL_SECONDS = 120.0  # no heartbeat for this long while "running": shown as stalled


def _json_safe(value: Any) -> Any:
    """NaN and inf are not JSON: write them as null so every reader can parse the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------------
# the worker's side


def _hostname() -> str:
    return os.uname().nodename if hasattr(os, "uname") else ""


# One worker per run folder: two would interleave metrics, fight over status.json and overwrite
# each other's checkpoints. The lock is an flock on RUN/.lock, so the OS drops it when the holder
# dies, kill -9 included: a crash never leaves a stale lock behind.
LOCK_NAME = ".lock"
_held_locks: dict[Path, int] = {}  # run folder (resolved) -> descriptor holding its lock


def lock_run_folder(run_dir: str | Path, hold: bool = True) -> None:
    """Take the run folder's lock for this process until unlock_run_folder (or the process ends);
    taking it again does nothing. hold=False only checks that no other process holds it (the
    launcher of a detached worker). BadInput naming the holder's pid when another process has it.
    Where fcntl is missing (Windows) or the file system has no locks, nothing is locked."""
    try:
        import fcntl
    except ImportError:
        return
    run_dir = Path(run_dir)
    if run_dir.resolve() in _held_locks:
        return
    path = run_dir / LOCK_NAME
    try:
        if hold:
            run_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # hold=False and no run folder yet: nobody is there
        return
    except OSError as error:
        raise BadInput(f"{path}: cannot open the run folder's lock ({error.strerror or error})") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 16).decode("ascii", errors="replace").strip()
        os.close(descriptor)
        raise BadInput(f"{run_dir}: a worker is already running there (pid {holder if holder.isdigit() else '?'}); "
                       f"stop it first with `picochat stop {run_dir}`") from None
    except OSError:  # no locks on this file system (some network mounts)
        os.close(descriptor)
        return
    if not hold:
        os.close(descriptor)  # closing releases it
        return
    with contextlib.suppress(OSError):  # the pid is for the message above only
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
    _held_locks[run_dir.resolve()] = descriptor


def unlock_run_folder(run_dir: str | Path) -> None:
    """Release the lock lock_run_folder took (nothing when this process holds none)."""
    descriptor = _held_locks.pop(Path(run_dir).resolve(), None)
    if descriptor is not None:
        os.close(descriptor)


def process_start_ticks(pid: int) -> int | None:
    """When process pid started: field 22 of /proc/PID/stat (clock ticks since boot), or None
    without /proc or without such a process. The kernel hands a dead worker's pid to the next
    process; the pair (pid, start time) names one process for good."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as stat_file:
            fields = stat_file.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
        return int(fields[19])  # fields[0] is field 3
    except (OSError, ValueError, IndexError):
        return None


def is_run_worker(status: dict[str, Any] | None) -> bool:
    """Is the process status.json names still the worker that wrote it: alive, on this host, and
    started when the worker recorded (pid_start)? Without /proc there is no telling, so False:
    a signal must never reach a process that merely inherited the pid."""
    if not isinstance(status, dict) or status.get("host", "") not in ("", _hostname()):
        return False
    pid, started = status.get("pid"), status.get("pid_start")
    if type(pid) is not int or pid <= 0 or type(started) is not int:
        return False
    return pid_alive(pid) and process_start_ticks(pid) == started


def _remove_entry(path: Path) -> None:
    """Remove whatever is at path: a file, a link (not its target), a folder with its contents."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _control_folder(run_dir: str | Path) -> tuple[Path, bool]:
    """RUN/control as a real folder: a file or a link under that name is replaced by one.
    Returns (the folder, whether something was replaced); OSError when it cannot be made."""
    control = Path(run_dir) / "control"
    replaced = control.is_symlink() or (control.exists() and not control.is_dir())
    if replaced:
        control.unlink()
    control.mkdir(parents=True, exist_ok=True)
    return control, replaced


def _open_for_append(path: Path):
    """metrics.jsonl for appending. A file that ends mid-line (its writer was killed mid-write)
    first gets a newline: the torn line stays one bad line instead of swallowing the next record."""
    handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by RunWriter.finish)
    if handle.tell() > 0:
        with open(path, "rb") as existing:
            existing.seek(-1, os.SEEK_END)
            torn = existing.read(1) != b"\n"
        if torn:
            handle.write("\n")
            handle.flush()
    return handle


class RunWriter:
    """What a worker (prepare, tokenizer, pretrain, sft, grpo, eval) uses to publish its progress.

    Only one process writes a run folder (rank 0 under torchrun): the writer holds the folder's
    lock from its start to finish(), and a second worker is refused (BadInput) before it writes
    anything. Any number of processes read it. A write that fails (a full disk) is a BadInput
    naming the file: the worker ends with one line, its last checkpoint intact.
    As a context manager it finishes "failed" when the block raises (the error's one line) and
    it has not finished yet.
    """

    def __init__(self, run_dir: str | Path, stage: str, total_steps: int | None = None):
        self.dir = Path(run_dir)
        lock_run_folder(self.dir)
        self.stage = stage
        self.started = time.time()
        self.status: dict[str, Any] = {
            "state": "starting",
            "stage": stage,
            "pid": os.getpid(),
            "pid_start": process_start_ticks(os.getpid()),  # lets `stop` tell this process from a pid reuser
            "host": _hostname(),
            "started": self.started,
            "heartbeat": self.started,
            "step": 0,
            "total_steps": total_steps,
            "tokens": 0,
            "eta_seconds": None,
            "message": "",
        }
        self._reported: set[str] = set()  # control/ oddities already logged (one event each)
        self.finished = False
        try:
            self._metrics = _open_for_append(self.dir / "metrics.jsonl")
            stale = self._clear_control()
        except OSError as error:
            raise BadInput(f"{self.dir}: cannot write the run folder ({error})") from None
        self.write_status()
        if stale:  # commands meant for an earlier worker: a stale pause would pause this one forever
            self.event(f"removed control files left by an earlier worker: {', '.join(stale)}")

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None and not self.finished:
            self.finish("failed", str(error) if isinstance(error, BadInput) else f"{kind.__name__}: {error}")

    def _failed_write(self, name: str, error: OSError) -> BadInput:
        return BadInput(f"{self.dir / name}: cannot write ({error.strerror or error})")

    # status.json: rewritten whole, atomically, at every update
    def write_status(self, **fields: Any) -> None:
        self.status.update(fields)
        self.status["heartbeat"] = time.time()
        try:
            atomic_write_text(self.dir / "status.json", json.dumps(_json_safe(self.status), indent=1))
        except OSError as error:
            raise self._failed_write("status.json", error) from None

    def heartbeat(self, step: int | None = None, **fields: Any) -> None:
        """Update step/tokens/eta and the heartbeat; call once per step (it is cheap)."""
        if step is not None:
            fields["step"] = step
            total = self.status.get("total_steps")
            elapsed = time.time() - self.started
            if total and step > self._first_step and elapsed > 0:
                rate = (step - self._first_step) / elapsed
                fields.setdefault("eta_seconds", max(0.0, (total - step) / rate))
        self.write_status(**fields)

    _first_step = 0

    def paused_for(self, seconds: float) -> None:
        """Leave a pause out of the ETA's rate (the clock it divides by starts later)."""
        self.started += seconds

    def set_first_step(self, step: int) -> None:
        """A resumed run starts counting its ETA from the step it resumed at."""
        self._first_step = step

    # metrics.jsonl: one JSON object per line, flushed at once so a tail sees it
    def log(self, kind: str, step: int | None = None, **fields: Any) -> None:
        record = {"t": round(time.time(), 3), "step": step if step is not None else self.status["step"],
                  "kind": kind, "stage": self.stage, **fields}
        try:
            self._metrics.write(json.dumps(_json_safe(record)) + "\n")
            self._metrics.flush()
        except OSError as error:
            raise self._failed_write("metrics.jsonl", error) from None

    def event(self, message: str, **fields: Any) -> None:
        self.log("event", message=message, **fields)

    def progress(self, done: float, total: float | None, unit: str = "", **fields: Any) -> None:
        """Progress of a non-step stage (prepare, tokenizer, eval) for the TUI's progress bars."""
        self.log("progress", done=done, total=total, unit=unit, **fields)
        self.write_status(progress=done, progress_total=total, progress_unit=unit)

    # control/: files a reader drops, applied by the worker at step boundaries
    def _clear_control(self) -> list[str]:
        """Empty control/ of commands when a worker starts; returns what it removed."""
        control, replaced = _control_folder(self.dir)
        stale = sorted(entry.name for entry in control.iterdir() if entry.name in CONTROL_COMMANDS)
        for name in stale:
            _remove_entry(control / name)
        return (["control (not a folder)"] if replaced else []) + stale

    def _report_once(self, key: str, message: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            self.event(message)

    def poll_control(self) -> list[str]:
        """Commands waiting in control/, oldest first; each is consumed (deleted) once read.
        Whatever else turns up never stops the worker: a folder or link under a command's name
        is removed, a `control` that is a file is replaced by a folder (one event each)."""
        try:
            control, replaced = _control_folder(self.dir)
            names = [entry.name for entry in control.iterdir() if entry.name in CONTROL_COMMANDS]
        except OSError as error:
            self._report_once("control", f"cannot read {self.dir / 'control'}: {error}")
            return []
        if replaced:
            self._report_once("control-replaced", f"{control} was not a folder: replaced by an empty one")
        found = []
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                found.append((os.lstat(control / name), control / name))
        commands = []
        for info, entry in sorted(found, key=lambda item: item[0].st_mtime):
            try:
                if stat.S_ISREG(info.st_mode):
                    entry.unlink()
                    commands.append(entry.name)
                else:
                    _remove_entry(entry)
                    self._report_once(str(entry), f"removed {entry}: a control command must be a file")
            except FileNotFoundError:
                continue
            except OSError as error:  # left in place: acting on it again at every step would be worse
                self._report_once(str(entry), f"cannot consume {entry}: {error}")
        return commands

    def finish(self, state: str = "done", message: str = "") -> None:
        """The final status and event; releases the run folder. For a failing worker they are
        best effort: the error it is ending with matters more than a write that fails too."""
        self.finished = True
        try:
            self.write_status(state=state, message=message, eta_seconds=0 if state == "done" else None)
            self.event(f"{self.stage} {state}" + (f": {message}" if message else ""))
        except BadInput:
            if state != "failed":
                raise
        finally:
            with contextlib.suppress(OSError):
                self._metrics.close()
            unlock_run_folder(self.dir)


def freeze_config(run_dir: str | Path, config_toml: str) -> None:
    """Write config.toml once, when a run starts; a resume keeps the first one."""
    path = Path(run_dir) / "config.toml"
    if not path.exists():
        atomic_write_text(path, config_toml)


# ---------------------------------------------------------------------------------------------
# the reader's side


# Readers never trust a run folder: a broken or hostile writer can leave any JSON there. Every
# record is checked once, here, so no caller ever sees a field of the wrong type.

MAX_JSON_FILE_BYTES = 1 << 20  # status, meta, config, evals .json are a few kB: bigger is not ours

# status.json fields by type (null allowed for numbers); one of the wrong type is dropped (a reader
# sees it missing)
STATUS_TEXT_FIELDS = ("state", "stage", "host", "message", "progress_unit")
STATUS_COUNT_FIELDS = ("step", "tokens", "total_steps")  # integers >= 0
STATUS_NUMBER_FIELDS = ("started", "heartbeat", "eta_seconds", "progress", "progress_total", "best_val_bpb")
MAX_PID = 2**31 - 1  # 0 and negative pids address process groups (os.kill(-1, ...): every process we own)

# metrics.jsonl fields the readers (TUI, CLI, report, speedrun) treat as numbers, and as text
METRIC_NUMBER_FIELDS = frozenset((
    "t", "step", "loss", "lr", "lr_multiplier", "grad_norm", "tokens", "tokens_per_second", "mfu",
    "step_seconds", "val_bpb", "val_loss", "best_val_bpb", "done", "total", "params", "flops_per_token",
    "peak_flops", "threads", "vocab_size", "chars_per_token", "bytes_per_token", "train_seconds",
    "accuracy", "end_rate", "reward_mean", "zero_variance_fraction", "completion_length", "documents",
))
METRIC_TEXT_FIELDS = frozenset(("kind", "stage"))


def is_number(value: Any) -> bool:
    """A finite int or float that a float can hold (True and False are not numbers here)."""
    if type(value) is int:  # JSON allows 4,000-digit integers: float() of one overflows
        return abs(value) <= sys.float_info.max
    return type(value) is float and math.isfinite(value)


def _typed_status(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """status.json's object with every known field of the right type (wrong ones dropped).
    Fields it does not know pass through untouched."""
    if status is None:
        return None
    for key in STATUS_TEXT_FIELDS:
        if key in status and not isinstance(status[key], str):
            del status[key]
    if "state" in status and status["state"] not in STATES:  # readers show it, and branch on it
        del status["state"]
    for key in STATUS_COUNT_FIELDS:
        value = status.get(key)
        if type(value) is float and value.is_integer():  # 300.0 from a writer that divided
            value = status[key] = int(value)
        if value is not None and not (type(value) is int and is_number(value) and value >= 0):
            del status[key]
    for key in STATUS_NUMBER_FIELDS:
        if status.get(key) is not None and not is_number(status[key]):
            del status[key]
    if "pid" in status and not (type(status["pid"]) is int and 0 < status["pid"] <= MAX_PID):
        del status["pid"]
    return status


def read_json_object(path: str | Path) -> dict[str, Any] | None:
    """A run folder's small JSON file (status, meta, config, evals) as a dict, or None when it is
    missing, unreadable, not a regular file, too big, not JSON, nested too deeply or not an object."""
    try:
        with open_regular(path) as handle:  # a FIFO would block forever: refused
            data = handle.read(MAX_JSON_FILE_BYTES + 1)
        if len(data) > MAX_JSON_FILE_BYTES:
            return None
        parsed = parse_json(data.decode("utf-8"))
    except (BadInput, OSError, ValueError):  # ValueError: bad JSON (too deep, too long a number too), bad UTF-8
        return None
    return parsed if isinstance(parsed, dict) else None


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """status.json as a dict with typed fields, or None when there is no usable one."""
    return _typed_status(read_json_object(Path(run_dir) / "status.json"))


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError, TypeError):  # gone, or a nonsense pid
        return False
    except PermissionError:
        return True
    # A zombie child (ours, not yet reaped) is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def exit_code(pid: int) -> int | None:
    """None while a worker this process started runs; its exit code once it ended (reaping it: no
    zombie is left). A child reaped elsewhere (subprocess cleans up after its own Popen objects)
    reads as 0."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None if pid_alive(pid) else 0
    return None if done == 0 else os.waitstatus_to_exitcode(status)


def effective_state(status: dict[str, Any] | None, now: float | None = None) -> str:
    """The state to show: what status.json says, corrected by what we can observe.
    crashed = the process is gone without finishing; stalled = alive but no heartbeat for long."""
    if status is None:
        return "missing"
    state = status.get("state", "unknown")
    if state in ("done", "stopped", "failed"):
        return state
    same_host = status.get("host", "") in ("", os.uname().nodename if hasattr(os, "uname") else "")
    if same_host and not pid_alive(status.get("pid")):
        return "crashed"
    now = time.time() if now is None else now
    heartbeat = status.get("heartbeat") or 0
    if state in ("running", "starting") and now - heartbeat > STALL_SECONDS:
        return "stalled"
    return state


def parse_metrics_lines(lines: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Parse JSONL lines; returns (records, number of bad lines). Bad lines are skipped, never fatal."""
    records, bad = [], 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            record = parse_json(line)
        except json.JSONDecodeError:  # not JSON, nested too deeply, a 5,000-digit number
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(_typed_record(record))
        else:
            bad += 1
    return records, bad


def _typed_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record without the fields a reader would trip on: non-finite numbers anywhere, known
    numeric fields (and any *_reward) that are neither numbers nor null, kind or stage that are
    not text, an MFU outside 0..100 %.
    One pass over the values; what a worker writes comes through unchanged."""
    wrong = []
    for key, value in record.items():
        value_type = type(value)
        if value_type is float or value_type is int:
            if key in METRIC_TEXT_FIELDS or not is_number(value):
                wrong.append(key)
            elif key == "mfu" and not 0 <= value <= 100:
                # no step beats the hardware: runs from before issue 19 measured the peak on a busy
                # machine and logged MFU 201%; shown missing rather than impossible
                wrong.append(key)
        elif value is None:  # a writer's NaN or "not measured": readers expect it
            continue
        elif (key in METRIC_NUMBER_FIELDS or key.endswith("_reward")
              or (key in METRIC_TEXT_FIELDS and value_type is not str)):
            wrong.append(key)
    for key in wrong:
        del record[key]
    return record


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Every record of metrics.jsonl (optionally of one kind). Corrupt lines are skipped."""
    try:
        with open_regular(Path(run_dir) / "metrics.jsonl") as handle:
            text = handle.read().decode("utf-8", errors="replace")
    except (BadInput, OSError):  # missing, not a regular file, unreadable
        return []
    records, _ = parse_metrics_lines(text.splitlines())
    return [r for r in records if kind is None or r.get("kind") == kind]


@dataclass
class MetricsTail:
    """Follows a metrics.jsonl as it grows: each read() returns only the new complete records.
    A partial last line (a writer mid-flush) waits for the next read; a truncated or replaced
    file starts over. Memory stays bounded whatever the file holds: at most MAX_READ_BYTES per
    read, and a line longer than MAX_LINE_BYTES is skipped (counted as bad) without being kept."""

    MAX_READ_BYTES = 64 << 20
    MAX_LINE_BYTES = 1 << 20  # a record is well under 1 kB; a sample's text a few kB

    path: Path
    offset: int = 0
    bad_lines: int = 0
    _partial: bytes = field(default=b"", repr=False)
    _skipping: bool = field(default=False, repr=False)  # inside an over-long line: drop up to its end

    def read(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # truncated or replaced
            self.offset, self._partial, self._skipping = 0, b"", False
        if size == self.offset:
            return []
        try:
            with open_regular(self.path) as handle:
                handle.seek(self.offset)
                chunk = handle.read(min(size - self.offset, self.MAX_READ_BYTES))
        except (BadInput, OSError):  # not a regular file, unreadable
            return []
        self.offset += len(chunk)
        if self._skipping:
            _, newline, chunk = chunk.partition(b"\n")
            if not newline:
                return []
            self._skipping = False
        data = self._partial + chunk
        complete, _, self._partial = data.rpartition(b"\n")
        if len(self._partial) > self.MAX_LINE_BYTES:
            self._partial, self._skipping = b"", True
            self.bad_lines += 1
        if not complete:
            return []
        records, bad = parse_metrics_lines(complete.decode("utf-8", errors="replace").split("\n"))
        self.bad_lines += bad
        return records


@dataclass
class RunInfo:
    """One row of `picochat runs` and of the TUI's Runs screen."""

    name: str
    path: Path
    state: str
    stage: str = ""
    step: int = 0
    total_steps: int | None = None
    tokens: int = 0
    loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    heartbeat: float | None = None
    message: str = ""
    status: dict[str, Any] = field(default_factory=dict, repr=False)


def _last_train_record(run_dir: Path, max_bytes: int = 65536) -> dict[str, Any] | None:
    """The newest train record, reading only the end of metrics.jsonl (runs can be huge)."""
    path = run_dir / "metrics.jsonl"
    try:
        with open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - max_bytes))
            tail = handle.read(max_bytes).decode("utf-8", errors="replace").splitlines()
    except (BadInput, OSError):  # missing, not a regular file, unreadable
        return None
    records, _ = parse_metrics_lines(tail[1:] if size > max_bytes else tail)
    for record in reversed(records):
        if record.get("kind") == "train":
            return record
    return None


def run_info(run_dir: str | Path) -> RunInfo:
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    info = RunInfo(name=run_dir.name, path=run_dir, state=effective_state(status), status=status or {})
    if status:
        info.stage = status.get("stage", "")
        info.step = int(status.get("step") or 0)
        info.total_steps = status.get("total_steps")
        info.tokens = int(status.get("tokens") or 0)
        info.eta_seconds = status.get("eta_seconds")
        info.heartbeat = status.get("heartbeat")
        info.message = status.get("message", "")
    last = _last_train_record(run_dir)
    if last:
        info.loss = last.get("loss")
        info.tokens_per_second = last.get("tokens_per_second")
    return info


def list_runs(runs_dir: str | Path) -> list[RunInfo]:
    """Every run folder under runs_dir (a folder with status.json, metrics.jsonl or config.toml),
    newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    infos = []
    for child in runs_dir.iterdir():
        if child.is_dir() and any((child / name).exists() for name in ("status.json", "metrics.jsonl", "config.toml")):
            infos.append(run_info(child))
    infos.sort(key=lambda info: info.heartbeat or 0, reverse=True)
    return infos


def list_checkpoints(run_dir: str | Path, bare: bool = False) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary folders are skipped). With
    `bare`, also step_N folders holding weights but no meta.json (a model copied in): chat, eval and
    serve load them, training never resumes from them nor prunes them."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and p.name.startswith("step_")
                  and ((p / "meta.json").exists() or (bare and (p / "model.safetensors").exists())))


def send_control(run_dir: str | Path, command: str) -> None:
    """Ask a running worker to stop, pause, resume or save; it acts at its next step boundary."""
    if command not in CONTROL_COMMANDS:
        raise ValueError(f"unknown control command {command!r}")
    try:
        control, _ = _control_folder(run_dir)
        target = control / command
        if target.is_symlink() or (target.exists() and not target.is_file()):
            _remove_entry(target)  # a folder named after the command would refuse the rename
        atomic_write_text(target, str(time.time()))
    except OSError as error:
        raise BadInput(f"{Path(run_dir) / 'control'}: cannot write the {command} command ({error})") from None


def stop_run(run_dir: str | Path, grace_seconds: float = 0.0) -> None:
    """Stop file first (clean: finishes the step, checkpoints); after grace_seconds, SIGTERM does
    the same for a worker busy outside its step loop, but only when status.json's pid is still
    that worker (is_run_worker): never a process that inherited the pid."""
    send_control(run_dir, "stop")
    status = read_status(run_dir)
    if not grace_seconds or not is_run_worker(status):
        return
    deadline = time.time() + grace_seconds
    while time.time() < deadline and is_run_worker(status):
        time.sleep(0.1)
    if is_run_worker(status):
        with contextlib.suppress(ProcessLookupError):  # it finished just now
            os.kill(status["pid"], signal.SIGTERM)


# ---------------------------------------------------------------------------------------------
# starting detached workers


def spawn_detached(argv: list[str], log_path: str | Path, cwd: str | Path | None = None,
                   env: dict[str, str] | None = None) -> int:
    """Start a worker in its own session with stdout/stderr appended to log_path and stdin closed:
    closing the terminal, the TUI or the SSH connection never reaches it (no SIGHUP, no broken pipe).
    Returns the pid."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=cwd, env=env, start_new_session=True, close_fds=True,
        )
    return process.pid


def picochat_command(*args: str) -> list[str]:
    """argv that runs `picochat ARGS...` with this interpreter (works inside any venv)."""
    return [sys.executable, "-m", "workbench.cli", *args]


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def relaunch_detached(verb: str, argv: list[str], run_dir: str | Path) -> int:
    """`picochat VERB ... --detach`: start the same command without --detach as a detached worker
    whose output goes to RUN/train.log, print where to look, and return at once."""
    run_dir = Path(run_dir)
    rest = [arg for arg in argv if arg != "--detach"]
    pid = spawn_detached(picochat_command(verb, *rest), run_dir / "train.log")
    print(f"started {verb} in the background (pid {pid}); log: {run_dir / 'train.log'}")
    print(f"follow it with: picochat attach {run_dir}   or   picochat-tui {run_dir.parent}")
    return 0
