"""What the TUI knows about the run folders, and the one worker that keeps it up to date.

The watcher runs in a thread (a Textual thread worker, off the UI thread). Every half second it
reads what the screens asked to follow (the run on the dashboard and its overlays, an eval's
folder, a prepare's folder: new metrics records, status, the tail of train.log, the worker's
memory) and, less often, the list of runs and of checkpoints; it posts a message for each thing
that changed. The app handles those messages (`@on`), folds them into one `Model`, and tells the
screen on view (`ModelChanged`), which redraws from the model. Nothing here trusts a run folder:
every reader is one of workbench.runs' garbage-tolerant ones, so a broken file shows as missing
fields, never as an exception.

Pure Python and Textual messages; no torch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.message import Message

from workbench import checkpoint_files, runs, sweep
from workbench.runs import exit_code
from workbench.tui.launch import failure_line

LOG_TAIL_BYTES = 8192
FOLDER_SECONDS = 0.5  # followed folders: new records, status, log
RUNS_SECONDS = 1.0  # the runs list
CHECKPOINT_SECONDS = 2.0  # every run's checkpoints and their small JSON files


# ---- checkpoints ----


def checkpoint_name(path: Path) -> str:
    """step_000300, or int8/step_000300 for a quantized copy."""
    return path.name if path.parent.name == "checkpoints" else f"{path.parent.name}/{path.name}"


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint as the Checkpoints, Evals and Chat screens show it."""

    path: Path
    meta: dict[str, Any]
    evals: dict[str, Any]
    model_bytes: int  # model.safetensors (the weights; what chat and eval load)
    total_bytes: int  # the whole folder (with the optimizer state training resumes from)

    @property
    def val_bpb(self) -> float | None:
        """meta.json's val bpb (training measured it), else the bpb an eval or quantize measured. An
        INT8 copy's meta.json holds its original's figure: only what was measured on the copy counts."""
        own = self.meta.get("val_bpb") if self.meta.get("quantization") != "int8" else None
        for value in (own, self.evals.get("bpb")):
            if isinstance(value, dict):
                value = value.get("bpb", value.get("val_bpb"))
            if runs.is_number(value):
                return float(value)
        return None


def read_checkpoint(path: Path) -> CheckpointInfo:
    total = model = 0
    try:
        for file in path.rglob("*"):
            if file.is_file():
                size = file.stat().st_size
                total += size
                if file.name == "model.safetensors":
                    model += size
    except OSError:  # deleted while we looked
        pass
    return CheckpointInfo(path, checkpoint_files.read_meta(path), checkpoint_files.read_evals(path), model, total)


def list_all_checkpoints(runs_dir: Path) -> list[Path]:
    """Every checkpoint of every run, by run name then step, INT8 copies after a run's own."""
    return [path for info in sorted(runs.list_runs(runs_dir), key=lambda info: info.name)
            for path in checkpoint_files.with_int8_copies(info.path)]


def _stamp(paths: list[Path]) -> tuple:
    stamps = []
    for path in paths:
        for name in ("meta.json", "evals.json", "model.safetensors"):
            try:
                stamps.append((path / name).stat().st_mtime)
            except OSError:
                stamps.append(None)
    return tuple(paths), tuple(stamps)


# ---- one followed folder ----


@dataclass
class FolderState:
    """A followed run folder as last read."""

    path: Path
    status: dict[str, Any] | None = None
    state: str = "missing"
    log_tail: str | None = None
    rss_bytes: int | None = None  # the live worker's resident memory (same host only)
    bad_lines: int = 0


def worker_rss(status: dict[str, Any] | None, state: str) -> int | None:
    """Resident memory of a live worker on this host, from /proc (None elsewhere)."""
    if not status or state not in ("starting", "running", "paused", "stopping", "stalled"):
        return None
    try:
        with open(f"/proc/{status['pid']}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None
    return None


def read_log_tail(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            return handle.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    except OSError:
        return None


class Follower:
    """Reads one folder: only the new bytes of metrics.jsonl, the status, the log tail."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tail = runs.MetricsTail(self.path / "metrics.jsonl")
        self.last: FolderState | None = None

    def read(self) -> tuple[FolderState, list[dict[str, Any]], bool]:
        """(state, new records, reset): reset when metrics.jsonl was truncated or replaced."""
        try:
            reset = self.tail.path.stat().st_size < self.tail.offset
        except OSError:
            reset = False
        records = self.tail.read()
        status = runs.read_status(self.path)
        state = runs.effective_state(status)
        folder = FolderState(self.path, status, state, read_log_tail(self.path / "train.log"),
                             worker_rss(status, state), self.tail.bad_lines)
        return folder, records, reset


# ---- messages ----


class RunsListed(Message):
    def __init__(self, infos: list[runs.RunInfo], sweeps: list[sweep.SweepInfo]):
        super().__init__()
        self.infos, self.sweeps = infos, sweeps


class CheckpointsListed(Message):
    def __init__(self, checkpoints: list[CheckpointInfo]):
        super().__init__()
        self.checkpoints = checkpoints


class FolderRead(Message):
    """New records of a followed folder and its state. first: the first read since it was
    followed (the records start from the top); reset: metrics.jsonl was truncated or replaced."""

    def __init__(self, folder: FolderState, records: list[dict[str, Any]], first: bool, reset: bool):
        super().__init__()
        self.folder, self.records, self.first, self.reset = folder, records, first, reset


class WorkerEnded(Message):
    """A worker this TUI started has exited: its exit code, and its error line when it failed."""

    def __init__(self, launched, code: int, line: str):
        super().__init__()
        self.launched, self.code, self.line = launched, code, line


class ModelChanged(Message):
    """Posted by the app to the screen on view: `topic` (runs, checkpoints, folder) changed;
    `path` is the folder for topic "folder"."""

    def __init__(self, topic: str, path: Path | None = None):
        super().__init__()
        self.topic, self.path = topic, path


# ---- the model the screens read ----


@dataclass
class Model:
    runs: list[runs.RunInfo] = field(default_factory=list)
    sweeps: list[sweep.SweepInfo] = field(default_factory=list)
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    folders: dict[Path, FolderState] = field(default_factory=dict)
    listed: bool = False  # the runs were read at least once

    def checkpoint(self, path: Path) -> CheckpointInfo | None:
        return next((info for info in self.checkpoints if info.path == path), None)

    def checkpoint_paths(self) -> list[Path]:
        return [info.path for info in self.checkpoints]


# ---- the watcher ----


class Watcher:
    """Reads run folders and posts what changed to `target` (the app). `run()` is the thread's
    loop; `read_now()` does one pass at once (the UI calls it when it starts following a new
    folder, so a screen opened on it shows its data in the first frame). A lock keeps the two
    from reading the same tails at the same time."""

    def __init__(self, target, runs_dir: Path):
        self.target, self.runs_dir = target, Path(runs_dir)
        self.followers: dict[Path, Follower] = {}
        self.wanted: frozenset[Path] = frozenset()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.next_runs = self.next_checkpoints = 0.0
        self.last_runs: tuple | None = None
        self.last_checkpoints: tuple | None = None
        self.passes = 0
        self.launched: list = []  # workers this TUI started (launch.Launched), until they end

    def follow(self, paths: set[Path]) -> None:
        """The folders to follow from now on (the UI thread calls this)."""
        self.wanted = frozenset(Path(path) for path in paths)

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()

    def read_now(self, everything: bool = False) -> None:
        if everything:
            self.next_runs = self.next_checkpoints = 0.0
        with self.lock:
            self._pass()

    def run(self) -> None:
        while not self.stopped.is_set():
            with self.lock:
                self._pass()
            self.wake.wait(FOLDER_SECONDS)
            self.wake.clear()

    def _post(self, message: Message) -> None:
        self.target.post_message(message)

    def _pass(self) -> None:
        now = time.monotonic()
        for path in list(self.followers):
            if path not in self.wanted:
                del self.followers[path]
        for path in self.wanted:
            follower = self.followers.setdefault(path, Follower(path))
            folder, records, reset = follower.read()
            if records or reset or folder != follower.last:
                first, follower.last = follower.last is None, folder
                self._post(FolderRead(folder, records, first, reset))
        for launched in list(self.launched):
            code = exit_code(launched.pid)
            if code is not None:
                self.launched.remove(launched)
                self._post(WorkerEnded(launched, code, failure_line(launched) if code else ""))
        if now >= self.next_runs:
            self.next_runs = now + RUNS_SECONDS
            infos = runs.list_runs(self.runs_dir)
            sweeps = sweep.list_sweeps(self.runs_dir)
            key = (tuple((info.name, info.state, info.stage, info.step, info.total_steps, info.loss,
                          info.tokens_per_second, info.eta_seconds, info.message) for info in infos),
                   tuple((found.name, found.state, found.done, tuple(found.run_names)) for found in sweeps))
            if key != self.last_runs:
                self.last_runs = key
                self._post(RunsListed(infos, sweeps))
        if now >= self.next_checkpoints:
            self.next_checkpoints = now + CHECKPOINT_SECONDS
            paths = list_all_checkpoints(self.runs_dir)
            stamp = _stamp(paths)
            if stamp != self.last_checkpoints:
                self.last_checkpoints = stamp
                self._post(CheckpointsListed([read_checkpoint(path) for path in paths]))
        self.passes += 1
