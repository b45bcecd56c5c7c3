"""Run untrusted (model-written) Python in a separate, limited process: `run_program(source, ...)`.

Defence in depth. No layer relies on Python-level state the program can reach, and each result says
which layers were active (SandboxResult.layers), since some need the kernel's or the user's consent.
The child side is sandbox_boot.py. Layers, outermost first, and what each stops:

- process (always): a separate interpreter (`python -I -S -B`: no PYTHON* variables, no site hooks)
  started with an EMPTY environment, in its own session and process group, in a fresh temporary
  folder deleted afterwards; killed with its whole group after the wall-clock timeout. Its direct
  parent (the launcher) also has an empty environment, so /proc/<ppid>/environ holds nothing.
- user-ns (only when not root): a user namespace, which lets an unprivileged user create the namespaces
  below. Root skips it and uses uid-nobody instead.
- pid-ns + mount-ns: the program sees only its own processes, through a /proc of its own; the
  scorer's /proc/<pid>/environ (an API key, say) and every other process are invisible, and signals
  cannot name them. When the namespace's PID 1 (the supervisor) exits, the kernel kills what is left.
- net-ns, ipc-ns: no network interface but a loopback that is down; no shared IPC objects.
- read-only-fs: inside the mount namespace every mount is remounted read-only.
- disk-quota: the program's folder is a tmpfs of `disk_mb` MB and 4096 inodes: total bytes, not per file.
- uid-nobody (root): the program runs as uid/gid 65534 with no groups; it cannot write or read what
  only root may, and RLIMIT_NPROC applies (the kernel never enforces it for uid 0). A Python installed
  where nobody may not look (pyenv under /root) is shown to it through a read-only bind mount.
  no-capabilities instead inside a user namespace, or where nobody could not reach the Python
  installation (it needs the mount namespace for that).
- rlimits (always): address space and data (memory_mb), CPU seconds (timeout + 1, then SIGXCPU),
  file size (16 MB or the quota), 64 open files, no processes (RLIMIT_NPROC 0), no core files, no
  locked memory.
- landlock (Linux 5.13+): writes only in its folder; reads only there, in the Python installation,
  the system libraries and /dev/null, zero, random, urandom (no /proc, no project, no home folders);
  with ABI 4+ no TCP bind/connect, with ABI 6+ no signals or abstract unix sockets beyond itself.
- seccomp (x86_64, aarch64): a BPF filter refuses with EPERM the system calls for sockets, process and
  thread creation, exec, signals to others, ptrace, mounts and namespaces, chdir, links, fifos and
  device nodes, chmod/chown, memfd, bpf, io_uring, keyrings and modules; another architecture's calls are
  killed. It holds whatever the route to the call: ctypes, `_imp.create_builtin`, a fresh module.
  Written here as 30 lines of BPF rather than a dependency: no maintained binding exists on PyPI
  (pyseccomp was last released in 2021 and needs the system's libseccomp anyway).
- python-guard: functions that reach the kernel without an audit event (threads, signal handlers,
  mkfifo/mknod, os._exit, setsid) are replaced by ones that raise.
- audit-hook (PEP 578, cannot be removed): refuses refused imports (socket, ctypes, subprocess, gc,
  sqlite3, ...), process/socket/ctypes/signal events, writes outside the folder by every audited
  route (open, os.open with a dir_fd, mkdir, utime, rename, remove), reads and listings of /proc and
  /sys, and the routes to its own function (gc, frames from tracebacks and generators,
  sys._getframe, trace functions). Its state lives in its closure as frozensets, strings and builtin
  functions captured at installation, and nothing but the interpreter holds the function.
  It is a layer, not the boundary: a Python-level check can be walked around (`_imp.create_builtin`
  hands out a fresh `_thread` or `posix` module whose functions the guard never replaced), which is
  what the kernel layers are for.

What holds where (tests/test_sandbox_attacks.py runs each attack with all layers, with the kernel
layers alone and, where Python-level checks should suffice, with the Python layers alone):
- here and in CI (root in a container, Linux 6.18, x86_64): every layer but user-ns.
- a user other than root, where the kernel allows user namespaces (most distributions): every layer
  but uid-nobody (no-capabilities instead: the program keeps the user's uid, and the read-only mounts
  and Landlock keep it from the user's files). Checked by hand with `setpriv --reuid 65534`.
- no namespaces (a container that forbids unshare): no private /proc, no read-only mounts and no tmpfs
  quota; the parent then kills a program whose folder outgrows the quota (checked every 50 ms). The
  scorer's /proc/<pid>/environ stays unreadable through uid-nobody or, for root that cannot become
  nobody, through no-capabilities (the kernel refuses a process with fewer capabilities) or Landlock;
  with none of these, only the audit hook refuses it. Threads then rest on seccomp (RLIMIT_NPROC does
  not bind uid 0).
- no Landlock or seccomp (old kernels, other architectures): the namespaces, uid and rlimits.
An early exit with status 0 counts as failed. Containment for evaluation, not a guarantee against a
kernel exploit.
"""

from __future__ import annotations

import json
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
DEFAULT_DISK_MB = 32  # everything the program writes, all files together
FILE_SIZE_MB = 16  # one file, stdout and stderr included
OUTPUT_LIMIT = 8192  # characters of stdout/stderr kept in the result
POLL_SECONDS = 0.05
DISK_ENTRIES_LIMIT = 4096  # files and folders, as the tmpfs's inode limit
BOOT = Path(__file__).with_name("sandbox_boot.py")
KERNEL_LAYERS = ("user-ns", "mount-ns", "pid-ns", "net-ns", "ipc-ns", "read-only-fs", "disk-quota",
                 "uid-nobody", "no-capabilities", "landlock", "seccomp")
SWITCHES = ("namespaces", "uid", "landlock", "seccomp", "python")  # what `disable` may name


@dataclass
class SandboxResult:
    status: str  # passed | failed | timeout | memory | disk | error
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    layers: tuple[str, ...] = ()  # the layers that were active (see the module doc)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(source: str, timeout: float = DEFAULT_TIMEOUT, memory_mb: int = DEFAULT_MEMORY_MB,
                python: str | None = None, *, disk_mb: int = DEFAULT_DISK_MB,
                disable: tuple[str, ...] = ()) -> SandboxResult:
    """Run `source` as a Python program in the sandbox. passed = it ran to its end and exited 0 within
    the limits; failed = an exception (an assertion, say) or an early exit; timeout = killed after
    `timeout` seconds (wall or CPU); memory = it ran out of its address space; disk = it wrote past its
    quota; error = the sandbox itself failed. `disable` switches layers off (SWITCHES) so that the
    attack suite can show each holding alone; evaluation never passes it."""
    unknown = set(disable) - set(SWITCHES)
    if unknown:
        raise ValueError(f"unknown sandbox layers {sorted(unknown)}; known: {', '.join(SWITCHES)}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="picochat-sandbox-", ignore_cleanup_errors=True) as folder:
        top = Path(folder)
        top.chmod(0o711)  # the nobody user may pass through to its folder, not list or read the rest
        work, python_dir = top / "work", top / "python"
        work.mkdir(mode=0o700)
        python_dir.mkdir(mode=0o755)
        (work / "program.py").write_text(source, encoding="utf-8")
        config = {"home": str(work), "top": str(top), "python_dir": str(python_dir),
                  "memory": memory_mb << 20, "cpu": max(1, int(timeout) + 1),
                  "fsize": min(FILE_SIZE_MB, disk_mb) << 20, "disk": disk_mb << 20, "disable": list(disable)}
        report_read, report_write = os.pipe()
        try:
            config["report_fd"] = report_write
            with open(top / "stdout", "wb") as out, open(top / "stderr", "wb") as err:
                process = subprocess.Popen(
                    [python or sys.executable, "-I", "-S", "-B", str(BOOT), json.dumps(config)],
                    cwd=work, env={}, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True, close_fds=True, pass_fds=(report_write,))
                os.close(report_write)
                report_write = -1
                ending = _watch(process, started + timeout, work, disk_mb << 20)
            report = _read_report(report_read)
        finally:
            os.close(report_read)
            if report_write != -1:
                os.close(report_write)
        stdout, stderr = _read(top / "stdout"), _read(top / "stderr")
    seconds = time.monotonic() - started
    code = report.get("returncode", process.returncode)
    layers = tuple(report.get("layers", ()))
    return SandboxResult(status=_status(ending, code, stderr, layers, seconds, timeout), returncode=code,
                         stdout=stdout, stderr=stderr, seconds=seconds, layers=layers)


def _watch(process: subprocess.Popen, deadline: float, work: Path, disk_bytes: int) -> str:
    """Wait for the child: "exited", "timeout" or "disk" (the folder outgrew its quota where no tmpfs
    holds it; inside a mount namespace the folder looks empty from here). Then kill its whole group,
    whatever happened: stray processes go too."""
    ending = "exited"
    try:
        while True:
            try:
                process.wait(timeout=max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    ending = "timeout"
                    break
                if _folder_too_big(work, disk_bytes):
                    ending = "disk"
                    break
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
    return ending


def _folder_too_big(folder: Path, limit: int) -> bool:
    total, entries, pending = 0, 0, [folder]
    while pending:
        try:
            with os.scandir(pending.pop()) as listing:
                for entry in listing:
                    entries += 1
                    stat = entry.stat(follow_symlinks=False)
                    total += stat.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
        except OSError:
            continue
        if total > limit or entries > DISK_ENTRIES_LIMIT:
            return True
    return False


def _read_report(fd: int) -> dict:
    """The boot's report: {"layers": [...]} from the program process before the program runs, then
    {"returncode": n} from the supervisor after it ended. Every writer has exited by now."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    report: dict = {}
    for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            report.update(record)
    return report


def _status(ending: str, code: int | None, stderr: str, layers: tuple[str, ...], seconds: float,
            timeout: float) -> str:
    killed_late = code == -signal.SIGKILL and seconds >= timeout * 0.9  # the CPU limit's hard kill
    if ending == "timeout" or code == -signal.SIGXCPU or killed_late:
        return "timeout"
    if ending == "disk" or code == -signal.SIGXFSZ:
        return "disk"
    if not layers:
        return "error"  # the sandbox never got as far as running the program
    if code == 0:
        return "passed"
    if "MemoryError" in stderr or code in (-signal.SIGSEGV, -signal.SIGKILL, -signal.SIGABRT):
        return "memory"
    if code is not None and code > 0:
        return "failed"
    return "error"


def _read(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(OUTPUT_LIMIT)
    except OSError:
        return ""
