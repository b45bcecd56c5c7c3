"""The model process behind the Chat and Inspect screens: `python -m workbench.engine.worker
CHECKPOINT`, spoken to in JSON lines (docs/interfaces.md), so the TUI itself never imports torch.

`ModelProcess` is mixed into a Screen that has `set_status(text)`; each screen keeps its own
conversation with the worker and handles the `WorkerEvent`s it posts. `generation` counts the
processes started, so an event from a replaced process is recognised and dropped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.message import Message


def worker_command(checkpoint: Path) -> list[str]:
    return [sys.executable, "-m", "workbench.engine.worker", str(checkpoint)]


class WorkerEvent(Message):
    """One JSON line from the model process, or {"type": "exit", "code", "reason"} when it is gone
    (reason: its last error line, which says why: a refused checkpoint, say)."""

    def __init__(self, data: dict[str, Any], generation: int):
        super().__init__()
        self.data, self.generation = data, generation


class ModelProcess:
    process: subprocess.Popen | None = None
    generation: int = 0

    def launch_model(self, command: list[str]) -> bool:
        """Replace the running model process (if any) with `command`; False when it cannot start."""
        self.stop_model()
        self.generation += 1
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL, text=True, bufsize=1)
        except OSError as error:
            self.set_status(Text(f"cannot start the model process: {error}", style="bold red"))
            return False
        self.read_events(self.process, self.generation)
        return True

    def stop_model(self) -> None:
        process, self.process = self.process, None
        if process and process.poll() is None:
            try:
                process.stdin.close()
            except OSError:
                pass
            process.terminate()

    @work(thread=True, exclusive=False)
    def read_events(self, process: subprocess.Popen, generation: int) -> None:
        last_error = ""
        for line in process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                data = json.loads(line)
            except ValueError:
                data = {"type": "error", "message": f"bad line from the model process: {line[:200]}"}
            if isinstance(data, dict):
                if data.get("type") == "error":
                    last_error = str(data.get("message", ""))
                self.post_message(WorkerEvent(data, generation))
        process.wait()
        self.post_message(WorkerEvent({"type": "exit", "code": process.returncode, "reason": last_error}, generation))

    def exit_text(self, data: dict[str, Any]) -> Text:
        """The status line for an exit event: the code, and the last error when there was one."""
        reason = f": {data['reason']}" if data.get("reason") else ""
        return Text(f"the model process exited (code {data.get('code')}){reason}", style="bold red")

    def send(self, request: dict[str, Any]) -> bool:
        if not self.process or self.process.poll() is not None:
            self.set_status(Text("no model process running: pick a checkpoint", style="bold red"))
            return False
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError) as error:
            self.set_status(Text(f"the model process is gone: {error}", style="bold red"))
            return False
        return True
