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

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATES = ("starting", "running", "paused", "stopping", "done", "failed")
CONTROL_COMMANDS = ("stop", "pause", "resume", "save")
STALL_SECONDS = 120.0  # no heartbeat for this long while "running": shown as stalled


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename: readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


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


class RunWriter:
    """What a worker (prepare, tokenizer, pretrain, sft, grpo, eval) uses to publish its progress.

    Only one process writes a run folder (rank 0 under torchrun); any number read it.
    """

    def __init__(self, run_dir: str | Path, stage: str, total_steps: int | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "control").mkdir(exist_ok=True)
        self.stage = stage
        self.started = time.time()
        self.status: dict[str, Any] = {
            "state": "starting",
            "stage": stage,
            "pid": os.getpid(),
            "host": os.uname().nodename if hasattr(os, "uname") else "",
            "started": self.started,
            "heartbeat": self.started,
            "step": 0,
            "total_steps": total_steps,
            "tokens": 0,
            "eta_seconds": None,
            "message": "",
        }
        self._metrics = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self.write_status()

    # status.json: rewritten whole, atomically, at every update
    def write_status(self, **fields: Any) -> None:
        self.status.update(fields)
        self.status["heartbeat"] = time.time()
        atomic_write_text(self.dir / "status.json", json.dumps(_json_safe(self.status), indent=1))

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
        self._metrics.write(json.dumps(_json_safe(record)) + "\n")
        self._metrics.flush()

    def event(self, message: str, **fields: Any) -> None:
        self.log("event", message=message, **fields)

    def progress(self, done: float, total: float | None, unit: str = "", **fields: Any) -> None:
        """Progress of a non-step stage (prepare, tokenizer, eval) for the TUI's progress bars."""
        self.log("progress", done=done, total=total, unit=unit, **fields)
        self.write_status(progress=done, progress_total=total, progress_unit=unit)

    # control/: files a reader drops, applied by the worker at step boundaries
    def poll_control(self) -> list[str]:
        """Commands waiting in control/, oldest first; each is consumed (deleted) once read."""
        commands = []
        control = self.dir / "control"
        try:
            entries = sorted(control.iterdir(), key=lambda p: p.stat().st_mtime)
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name in CONTROL_COMMANDS:
                commands.append(entry.name)
                entry.unlink(missing_ok=True)
        return commands

    def finish(self, state: str = "done", message: str = "") -> None:
        self.write_status(state=state, message=message, eta_seconds=0 if state == "done" else None)
        self.event(f"{self.stage} {state}" + (f": {message}" if message else ""))
        self._metrics.close()


def freeze_config(run_dir: str | Path, config_toml: str) -> None:
    """Write config.toml once, when a run starts; a resume keeps the first one."""
    path = Path(run_dir) / "config.toml"
    if not path.exists():
        atomic_write_text(path, config_toml)


# ---------------------------------------------------------------------------------------------
# the reader's side


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """status.json as a dict, or None when there is none (or it cannot be parsed)."""
    try:
        return json.loads((Path(run_dir) / "status.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None


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


def effective_state(status: dict[str, Any] | None, now: float | None = None) -> str:
    """The state to show: what status.json says, corrected by what we can observe.
    crashed = the process is gone without finishing; stalled = alive but no heartbeat for long."""
    if status is None:
        return "missing"
    state = status.get("state", "unknown")
    if state in ("done", "failed"):
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
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Every record of metrics.jsonl (optionally of one kind). Corrupt lines are skipped."""
    try:
        text = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records, _ = parse_metrics_lines(text.splitlines())
    return [r for r in records if kind is None or r.get("kind") == kind]


@dataclass
class MetricsTail:
    """Follows a metrics.jsonl as it grows: each read() returns only the new complete records.
    A partial last line (a writer mid-flush) waits for the next read; a truncated or replaced
    file starts over."""

    path: Path
    offset: int = 0
    bad_lines: int = 0
    _partial: bytes = field(default=b"", repr=False)

    def read(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # truncated or replaced
            self.offset, self._partial = 0, b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read(size - self.offset)
        self.offset += len(chunk)
        data = self._partial + chunk
        complete, _, self._partial = data.rpartition(b"\n")
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
        size = path.stat().st_size
        with open(path, "rb") as handle:
            handle.seek(max(0, size - max_bytes))
            tail = handle.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
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


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary folders are skipped)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and p.name.startswith("step_") and (p / "meta.json").exists())


def send_control(run_dir: str | Path, command: str) -> None:
    """Ask a running worker to stop, pause, resume or save; it acts at its next step boundary."""
    if command not in CONTROL_COMMANDS:
        raise ValueError(f"unknown control command {command!r}")
    control = Path(run_dir) / "control"
    control.mkdir(parents=True, exist_ok=True)
    atomic_write_text(control / command, str(time.time()))


def stop_run(run_dir: str | Path, grace_seconds: float = 0.0) -> None:
    """Stop file first (clean: finishes the step, checkpoints); SIGTERM does the same for a worker
    that is busy outside its step loop."""
    send_control(run_dir, "stop")
    status = read_status(run_dir)
    if grace_seconds and status and pid_alive(status.get("pid")):
        deadline = time.time() + grace_seconds
        while time.time() < deadline and pid_alive(status.get("pid")):
            time.sleep(0.1)
        if pid_alive(status.get("pid")):
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
