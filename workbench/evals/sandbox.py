"""Run untrusted (model-written) Python in a separate, limited process.

Layers, outermost first:
- a separate interpreter (`python -I -S`: no user site, no PYTHON* variables, no site hooks) in its own
  session, started with an EMPTY environment in a fresh temporary folder that is deleted afterwards;
- a wall-clock timeout after which the whole process group is killed;
- resource limits set by the child on itself before the program runs: address space (RLIMIT_AS),
  CPU seconds, file size, no core files;
- an audit hook (PEP 578; it cannot be removed once installed) that refuses sockets, subprocesses,
  fork/exec/kill, ctypes, raising the limits again, file writes outside the temporary folder and
  deleting or renaming files;
- a guard in the spirit of OpenAI human-eval's reliability_guard: `socket.socket`, `os.system`,
  `subprocess.Popen` and friends replaced by functions that raise.

There is no network namespace (unshare is not available here), so "no network" rests on the audit
hook and the guard. This is containment for evaluation, not a security boundary against a
determined attacker with a kernel exploit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT = 10.0  # seconds of wall time per program
DEFAULT_MEMORY_MB = 1024  # address space
OUTPUT_LIMIT = 8192  # characters of stdout/stderr kept in the result

# The child's first code: limits, then the guard, then the program (read from program.py in cwd).
_BOOT = r'''
import builtins, os, resource, sys
memory, cpu_seconds, file_bytes = {memory}, {cpu}, {fsize}
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
with open("program.py", encoding="utf-8") as handle:
    source = handle.read()
home = os.getcwd()

BLOCKED_MODULES = {{"socket", "_socket", "ssl", "_ssl", "select", "selectors", "subprocess",
                   "_posixsubprocess", "multiprocessing", "_multiprocessing", "ctypes", "_ctypes",
                   "pty", "resource", "signal", "urllib.request", "http.client", "ftplib", "smtplib",
                   "asyncio", "concurrent", "threading", "_thread"}}
BLOCKED_EVENTS = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                  "os.forkpty", "os.kill", "os.killpg", "os.remove", "os.unlink", "os.rmdir", "os.rename",
                  "os.replace", "os.chmod", "os.chown", "os.truncate", "os.link", "os.symlink",
                  "shutil.rmtree", "ctypes.", "resource.setrlimit", "resource.prlimit", "sys.addaudithook",
                  "os.putenv", "os.unsetenv", "os.chdir", "pty.", "webbrowser.", "urllib.")

def _hook(event, args):
    if event == "import":
        name = args[0] or ""
        if name in BLOCKED_MODULES or name.split(".")[0] in BLOCKED_MODULES:
            raise ImportError(f"sandbox: import of {{name}} is not allowed")
    elif event == "open":
        path, mode = args[0], args[1]
        writing = isinstance(mode, str) and any(c in mode for c in "wax+")
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        writing = writing or bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        if writing and isinstance(path, (str, bytes)):
            path = os.fsdecode(path)
            if not os.path.abspath(path).startswith(home + os.sep):
                raise PermissionError(f"sandbox: writing {{path}} is not allowed")
    elif event.startswith(BLOCKED_EVENTS):
        raise PermissionError(f"sandbox: {{event}} is not allowed")

def _refuse(*args, **kwargs):
    raise PermissionError("sandbox: disabled")

# reliability_guard: the obvious doors, shut before anything can reach them
import shutil
for name in ("system", "kill", "killpg", "fork", "forkpty", "putenv", "unsetenv", "remove", "removedirs",
             "rmdir", "unlink", "rename", "renames", "replace", "truncate", "chmod", "chown", "lchown",
             "setuid", "setgid", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp",
             "execlpe", "spawnv", "spawnve", "posix_spawn", "posix_spawnp", "chdir", "fchdir", "link",
             "symlink"):
    if hasattr(os, name):
        setattr(os, name, _refuse)
shutil.rmtree = shutil.move = shutil.chown = _refuse
builtins.exit = builtins.quit = _refuse
for name in list(sys.modules):
    if name in BLOCKED_MODULES:
        del sys.modules[name]
sys.addaudithook(_hook)
del resource
code = compile(source, "program.py", "exec")
namespace = {{"__name__": "__main__", "__builtins__": builtins}}
exec(code, namespace)
'''


@dataclass
class SandboxResult:
    status: str  # passed | failed | timeout | memory | error
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _read(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(OUTPUT_LIMIT)
    except OSError:
        return ""


def run_program(source: str, timeout: float = DEFAULT_TIMEOUT, memory_mb: int = DEFAULT_MEMORY_MB,
                python: str | None = None) -> SandboxResult:
    """Run `source` as a Python program in the sandbox. passed = exit code 0 within the limits;
    failed = an exception (an assertion, say); timeout = killed after `timeout` seconds (wall or CPU);
    memory = it ran out of its address space (MemoryError or killed for it)."""
    cpu_seconds = max(1, int(timeout) + 1)
    boot = _BOOT.format(memory=memory_mb << 20, cpu=cpu_seconds, fsize=16 << 20)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="picochat-sandbox-") as folder:
        work = Path(folder)
        (work / "program.py").write_text(source, encoding="utf-8")
        out_path, err_path = work / ".stdout", work / ".stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(
                [python or sys.executable, "-I", "-S", "-B", "-c", boot],
                cwd=folder, env={}, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, close_fds=True,
            )
            timed_out = False
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Everything in its session goes, whether or not it finished (stray children too).
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                process.wait()
        stdout, stderr = _read(out_path), _read(err_path)
    seconds = time.monotonic() - started
    code = process.returncode
    if timed_out or code in (-signal.SIGXCPU, -signal.SIGKILL) and seconds >= timeout * 0.9:
        status = "timeout"
    elif code == 0:
        status = "passed"
    elif "MemoryError" in stderr or code in (-signal.SIGSEGV, -signal.SIGKILL, -signal.SIGABRT):
        status = "memory"
    elif code is not None and code > 0:
        status = "failed"
    else:
        status = "error"
    if code == -signal.SIGXCPU:
        status = "timeout"
    return SandboxResult(status=status, returncode=code, stdout=stdout, stderr=stderr, seconds=seconds)
