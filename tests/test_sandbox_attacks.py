"""Attacks on the HumanEval sandbox (workbench.evals.sandbox.run_program), written as an adversary would.

Each attack tries to do harm outside its temporary folder and the test checks that the harm did not
happen (a file outside, a live victim process, a secret, a connection), not merely that an error was
printed. Each attack runs with all layers, with the kernel layers alone (where this machine offers
them) and, where Python-level checks are expected to suffice, with the Python layers alone (audit hook
and guard). Some attacks walk around any Python-level check (`_imp.create_builtin` hands out a fresh
`_thread` module whose functions the guard never saw): those run only where the kernel layers are on.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from workbench.evals.sandbox import KERNEL_LAYERS, run_program

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def layers_here() -> frozenset[str]:
    result = run_program("pass\n")
    assert result.passed, result.stderr
    return frozenset(result.layers)


MODES = {"all layers": (), "kernel layers only": ("python",),
         "python layers only": ("namespaces", "uid", "landlock", "seccomp")}


def _mode(name: str, layers_here: frozenset[str]) -> dict:
    if name == "kernel layers only" and not {"seccomp", "landlock"} <= layers_here:
        pytest.skip(f"this machine offers no seccomp+landlock (layers: {sorted(layers_here)})")
    return {"disable": MODES[name]} if MODES[name] else {}


@pytest.fixture(params=list(MODES))
def mode(request, layers_here) -> dict:
    """Attacks that every group of layers stops on its own."""
    return _mode(request.param, layers_here)


@pytest.fixture(params=["all layers", "kernel layers only"])
def strong_mode(request, layers_here) -> dict:
    """Attacks that only the kernel layers stop: a Python-level check can be walked around."""
    return _mode(request.param, layers_here)


@pytest.fixture
def outside():
    """A folder outside the sandbox that anybody may write to (so file permissions alone stop nothing)."""
    folder = Path(tempfile.mkdtemp(prefix="picochat-attack-"))
    folder.chmod(0o777)
    (folder / "existing.txt").write_text("untouched")
    (folder / "existing.txt").chmod(0o666)
    os.utime(folder / "existing.txt", (1_000_000, 1_000_000))
    yield folder
    shutil.rmtree(folder)


def assert_untouched(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["existing.txt"]
    existing = folder / "existing.txt"
    assert existing.read_text() == "untouched" and existing.stat().st_mtime == 1_000_000


def attempt(label: str, code: str) -> str:
    """Source that runs `code` and prints what happened, whatever happened."""
    body = "\n".join("    " + line for line in code.strip("\n").splitlines())
    return (f"try:\n{body}\n    print({label!r}, 'SUCCEEDED')\n"
            f"except BaseException as error:\n    print({label!r}, 'refused:', type(error).__name__, error)\n")


def run_attacks(attacks: dict[str, str], mode: dict, timeout: float = 10, prelude: str = ""):
    source = prelude + "".join(attempt(label, code) for label, code in attacks.items())
    result = run_program(source, timeout=timeout, **mode)
    for label in attacks:  # each attack ran to its end (an earlier one did not kill the program)
        assert f"{label} " in result.stdout, (label, result)
    return result


# ---------------------------------------------------------------------------------------------
# 1. the hook's state: rebinding it, emptying it, finding it


REBIND_EVERYTHING = r"""
import sys, builtins, os, posixpath
try:
    import subprocess  # first: the rebinding below would break the import machinery too
except ImportError as error:
    print("subprocess import refused:", error)
# Empty every container of strings and every path-like string in every module we can see, the
# program's own __main__ included (the old sandbox kept its hook's state there).
machinery = ("sys", "importlib", "_frozen_importlib", "_frozen_importlib_external", "encodings", "codecs")
namespaces = [vars(m) for name, m in list(sys.modules.items())
              if m is not None and name.partition(".")[0] not in machinery]
namespaces.append(os.mkfifo.__globals__ if hasattr(os.mkfifo, "__globals__") else {})
for namespace in namespaces:
    for name, value in list(namespace.items()):
        try:
            if isinstance(value, (set, frozenset, tuple, list)) and value and all(isinstance(v, str) for v in value):
                namespace[name] = type(value)()
            elif isinstance(value, str) and ("sandbox" in value or name == "home"):
                namespace[name] = ""
        except Exception:
            pass
main = sys.modules["__main__"]
main.BLOCKED_EVENTS, main.BLOCKED_MODULES, main.home = (), set(), ""
builtins.isinstance = lambda *a: False
builtins.any = lambda *a: False
builtins.PermissionError = builtins.ImportError = KeyboardInterrupt
os.path.abspath = posixpath.abspath = posixpath.realpath = lambda p: os.getcwd() + "/harmless"
os.fsdecode = lambda p: os.getcwd() + "/harmless"
"""


def test_rebinding_the_hooks_state_opens_no_door(outside, mode):
    result = run_attacks({
        "subprocess": f"subprocess.run(['sh', '-c', 'echo escaped > {outside}/sh'])",
        "os.system": f"status = os.system('echo escaped > {outside}/system')\nassert status == 0, status",
        "open": f"open('{outside}/open', 'w').write('escaped')",
        "open-relative": f"open('../../../../../../..{outside}/relative', 'w').write('escaped')",
    }, mode, prelude=REBIND_EVERYTHING)
    assert "SUCCEEDED" not in result.stdout, result.stdout
    assert_untouched(outside)


HUNT_THE_HOOK = r"""
import sys
functions = []
try:
    import gc
    functions = [o for o in gc.get_objects() if type(o).__name__ == "function"]
    print("gc found", len(functions))
except BaseException as error:
    print("gc refused:", type(error).__name__, error)
def walk(frame):
    while frame is not None:
        for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
            if callable(value) and getattr(value, "__closure__", None):
                functions.append(value)
        frame = frame.f_back
try:
    walk(sys._getframe())
except BaseException as error:
    print("_getframe refused:", type(error).__name__, error)
try:
    open("/etc/hostname-not-here", "w")
except BaseException as error:
    try:
        tb = error.__traceback__
        while tb is not None:
            walk(tb.tb_frame)
            tb = tb.tb_next
    except BaseException as error:
        print("tb_frame refused:", type(error).__name__, error)
def classes(cls):
    for sub in type.__subclasses__(cls):
        yield sub
        yield from classes(sub)
for cls in classes(object):
    for value in list(vars(cls).values()):
        if callable(value) and getattr(value, "__closure__", None):
            functions.append(value)
emptied = 0
for function in functions:
    for cell in function.__closure__ or ():
        try:
            value = cell.cell_contents
            if isinstance(value, (set, frozenset, tuple)) and any(isinstance(v, str) for v in value):
                cell.cell_contents = type(value)(); emptied += 1
            elif isinstance(value, str) and value.startswith("/"):
                cell.cell_contents = ""; emptied += 1
        except Exception:
            pass
print("emptied", emptied, "closure cells")
"""


def test_hunting_the_hook_through_gc_frames_and_subclasses_finds_nothing(outside):
    result = run_attacks({
        "open": f"open('{outside}/open', 'w').write('escaped')",
        "subprocess": f"import subprocess\nsubprocess.run(['sh', '-c', 'echo escaped > {outside}/sh'])",
    }, {}, prelude=HUNT_THE_HOOK)
    assert "SUCCEEDED" not in result.stdout, result.stdout
    assert "gc refused" in result.stdout and "_getframe refused" in result.stdout, result.stdout
    assert_untouched(outside)


# ---------------------------------------------------------------------------------------------
# 2. writes outside the temporary folder, by every route


def test_no_write_outside_by_any_route(outside, mode):
    result = run_attacks({
        "open": f"open('{outside}/open', 'w').write('x')",
        "os.open dir_fd": (f"fd = os.open('{outside}', os.O_RDONLY)\n"
                           "w = os.open('dirfd', os.O_WRONLY | os.O_CREAT, dir_fd=fd)\nos.write(w, b'x')"),
        "os.mkdir": f"os.mkdir('{outside}/made')",
        "os.mkfifo": f"os.mkfifo('{outside}/fifo')",
        "posix.mkfifo": f"import posix\nposix.mkfifo('{outside}/fifo2')",
        "os.utime now": f"os.utime('{outside}/existing.txt')",
        "os.utime zero": f"os.utime('{outside}/existing.txt', (0, 0))",
        "append": f"open('{outside}/existing.txt', 'a').write('x')",
        "sqlite3.connect": f"import sqlite3\nsqlite3.connect('{outside}/db.sqlite').execute('create table t(x)')",
        "sqlite3 attach": ("import sqlite3\ndb = sqlite3.connect(':memory:')\n"
                           f"db.execute(\"attach database '{outside}/attached.db' as a\")\n"
                           "db.execute('create table a.t(x)')"),
        "/dev/shm": "open('/dev/shm/picochat-attack', 'w').write('x')",
    }, mode, prelude="import os\n")
    assert "SUCCEEDED" not in result.stdout, result.stdout
    assert_untouched(outside)
    assert not Path("/dev/shm/picochat-attack").exists()


def test_ctypes_writes_and_syscalls_meet_the_kernel_layers(outside, mode):
    if "python" not in mode.get("disable", ()):
        result = run_attacks({"import ctypes": "import ctypes",
                              "_ctypes via _imp": (
                                  "import _imp, importlib.machinery\n"
                                  "spec = importlib.machinery.PathFinder.find_spec('_ctypes')\n"
                                  "_imp.create_dynamic(spec).dlopen(None)")}, mode)
        assert "SUCCEEDED" not in result.stdout, result.stdout
        return
    result = run_program(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"print('open', libc.open(b'{outside}/ctypes', os.O_WRONLY | os.O_CREAT, 0o666))\n"
        "print('fork', libc.fork())\n"
        f"print('mount', libc.mount(b'none', b'{outside}', b'tmpfs', 0, None))\n"
        "print('unshare', libc.unshare(0x10000000))\n"
        "print('socket', libc.socket(2, 1, 0))\n", **mode)
    assert result.passed, result.stderr
    for call in ("open", "fork", "mount", "unshare", "socket"):
        assert f"{call} -1" in result.stdout, result.stdout
    assert_untouched(outside)


# ---------------------------------------------------------------------------------------------
# 3. the scorer's environment


ENVIRON_THIEF = r"""
import os
seen = [repr(dict(os.environ))]
pids = ["self", str(os.getppid()), str(PARENT), "1"]
try:
    pids += os.listdir("/proc")
except BaseException as error:
    print("listdir refused:", type(error).__name__, error)
for pid in pids:
    for path in (f"/proc/{pid}/environ", f"/proc/{pid}/cmdline", f"/dev/fd/../../{pid}/environ"):
        try:
            with open(path, "rb") as handle:
                seen.append(handle.read().decode("latin-1"))
        except BaseException as error:
            pass
    try:
        with open(f"/proc/{pid}/status") as handle:
            ppid = [l.split()[1] for l in handle if l.startswith("PPid:")][0]
        with open(f"/proc/{ppid}/environ", "rb") as handle:
            seen.append(handle.read().decode("latin-1"))
    except BaseException:
        pass
everything = "\n".join(seen)
for start in range(len(everything)):  # print only what matters: the output is cut at 8 KB
    if everything.startswith("PICOCHAT_API_KEY", start):
        print("FOUND", everything[start:start + 80])
print("THIEF DONE", len(seen), "sources read")
"""


def test_the_scorers_environment_is_invisible(mode):
    secret = "picochat-secret-" + uuid.uuid4().hex
    scorer = ("import json, os, sys\nfrom workbench.evals.sandbox import run_program\n"
              "source = f'PARENT = {os.getpid()}\\n' + sys.stdin.read()\n"
              f"result = run_program(source, **{mode!r})\n"
              "print(json.dumps({'stdout': result.stdout, 'stderr': result.stderr}))\n")
    done = subprocess.run([sys.executable, "-c", scorer], input=ENVIRON_THIEF, capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PICOCHAT_API_KEY": secret}, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "THIEF DONE" in result["stdout"], result
    assert secret not in result["stdout"] and secret not in result["stderr"]


def test_files_outside_cannot_be_read(outside, strong_mode):
    secret = "picochat-secret-" + uuid.uuid4().hex
    (outside / "secret.txt").write_text(secret)
    (outside / "secret.txt").chmod(0o600)
    result = run_attacks({"read": f"print(open('{outside}/secret.txt').read())"}, strong_mode)
    if not {"landlock", "uid-nobody"} & set(result.layers):
        pytest.skip("neither landlock nor a separate uid here: the sandbox reads what its user can")
    assert secret not in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# 4. threads, processes, signals


def test_no_threads_through_any_back_door(strong_mode):
    result = run_attacks({
        "_frozen_importlib": "import _frozen_importlib\n_frozen_importlib._thread.start_new_thread(print, ('THREAD RAN',))",
        "sys.modules": "import sys\nsys.modules['_thread'].start_new_thread(print, ('THREAD RAN',))",
        "threading": "import threading\nthreading.Thread(target=print, args=('THREAD RAN',)).start()",
        "fresh _thread": ("import _imp, importlib.machinery\n"
                          "spec = importlib.machinery.BuiltinImporter.find_spec('_thread')\n"
                          "_imp.create_builtin(spec).start_new_thread(print, ('THREAD RAN',))"),
    }, strong_mode, prelude="import time\n")
    assert "THREAD RAN" not in result.stdout and "SUCCEEDED" not in result.stdout, result.stdout


def test_no_processes_even_through_back_doors(outside, mode):
    fork_exec = ("import _imp, importlib.machinery, os\n"
                 "spec = importlib.machinery.PathFinder.find_spec('_posixsubprocess')\n"
                 "ps = _imp.create_dynamic(spec)\nr, w = os.pipe()\n"
                 f"ps.fork_exec([b'/bin/sh', b'-c', b'echo escaped > {outside}/forked'], [b'/bin/sh'], True, (w,),"
                 " None, None, -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)")
    result = run_attacks({
        "fork bomb": "for _ in range(32):\n    if os.fork() == 0:\n        print('CHILD LIVES', flush=True)\n        os._exit(0)",
        "posix.fork": "import posix\nposix.fork()",
        "_posixsubprocess": fork_exec,
        "posix_spawn": f"os.posix_spawn('/bin/sh', ['sh', '-c', 'echo escaped > {outside}/spawned'], {{}})",
    }, mode, prelude="import os\n")
    assert "CHILD LIVES" not in result.stdout and "SUCCEEDED" not in result.stdout, result.stdout
    assert_untouched(outside)


def test_signals_reach_nobody_outside(mode):
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        result = run_attacks({
            "kill victim": f"os.kill({victim.pid}, 9)",
            "killpg victim": f"os.killpg({victim.pid}, 9)",
            "kill parent": "os.kill(os.getppid(), 9)",
            "pidfd": f"fd = os.pidfd_open({victim.pid})\nimport _signal",
        }, mode, prelude="import os\n")
        assert victim.poll() is None, result
        assert result.status in ("passed", "failed"), result
    finally:
        victim.kill()
        victim.wait()


# ---------------------------------------------------------------------------------------------
# 5. network


def test_no_network_by_any_route(mode):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # a connection would wait in the backlog even though nobody accepts it
    port = server.getsockname()[1]
    try:
        result = run_attacks({
            "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
            "_socket via _imp": ("import _imp, importlib.machinery\n"
                                 "spec = importlib.machinery.PathFinder.find_spec('_socket')\n"
                                 f"_imp.create_dynamic(spec).socket().connect(('127.0.0.1', {port}))"),
            "unix socket": "import socket\nsocket.socket(socket.AF_UNIX).connect('/run/systemd/private')",
        }, mode)
        assert "SUCCEEDED" not in result.stdout, result.stdout
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------
# 6. resources: disk, memory, time


def test_disk_quota_counts_total_bytes(strong_mode):
    result = run_program(
        "total = 0\ntry:\n    for i in range(400):  # 400 files of 1 MB: under any per-file limit\n"
        "        with open(f'f{i}', 'wb') as handle:\n            handle.write(b'x' * (1 << 20))\n"
        "        total += 1 << 20\nexcept OSError as error:\n    print('stopped:', error)\n"
        "print('WROTE', total >> 20, 'MB')\n", timeout=20, **strong_mode)
    if "disk-quota" not in result.layers:
        pytest.skip("no tmpfs quota here (no mount namespace): see the parent's watch below")
    assert "WROTE 400 MB" not in result.stdout, result
    assert "stopped:" in result.stdout or not result.passed, result


def test_without_a_tmpfs_the_parent_stops_a_folder_past_its_quota():
    result = run_program("for i in range(3):\n    with open(f'f{i}', 'wb') as handle:\n"
                         "        handle.write(b'x' * (15 << 20))\nimport time\ntime.sleep(60)\n",
                         timeout=30, disable=("namespaces",))
    assert "disk-quota" not in result.layers and result.status == "disk", result


def test_one_huge_file_is_stopped(mode):
    result = run_program("with open('big', 'wb') as handle:\n    for _ in range(400):\n"
                         "        handle.write(b'x' * (1 << 20))\nprint('WROTE 400 MB')\n", timeout=20, **mode)
    assert not result.passed and "WROTE 400 MB" not in result.stdout, result


def test_memory_bomb_is_stopped(mode):
    result = run_program("blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))\n",
                         timeout=20, memory_mb=256, **mode)
    assert result.status == "memory", result


def test_memory_outside_the_address_space_is_refused(mode):
    result = run_attacks({"memfd": "fd = os.memfd_create('bomb')\nos.write(fd, b'x' * (8 << 20))",
                          "/dev/shm": "open('/dev/shm/bomb', 'wb').write(b'x' * (8 << 20))"},
                         mode, prelude="import os\n")
    assert "SUCCEEDED" not in result.stdout, result.stdout


def test_time_bomb_inside_one_c_call_is_stopped(mode):
    result = run_program("sum(range(10 ** 13))\n", timeout=1.5, **mode)
    assert result.status == "timeout", result


def test_an_early_exit_with_status_0_does_not_pass():
    for program in ["import sys\nsys.exit(0)\nassert False\n", "exit()\nassert False\n",
                    "raise SystemExit\n", "import os\nos._exit(0)\n"]:
        result = run_program(program)
        assert not result.passed, (program, result)


def test_no_exit_status_0_after_a_failure_by_any_route(mode):
    """A failed program cannot turn its exit status into 0: not through the hooks Python consults on
    the way out, the builtins the boot's own code names, an exit code that wraps around, nor a fresh
    posix module whose _exit the guard never replaced (no kernel layer can tell that exit from an end)."""
    failure = "assert False, 'the tests failed'\n"
    routes = {
        "excepthook": "import sys\nsys.excepthook = lambda *a: sys.exit(0)\n",
        "SystemExit rebound": "import builtins, sys\nbuiltins.SystemExit = KeyError\nsys.exit(0)\n",
        "BaseException rebound": "import builtins, sys\nbuiltins.BaseException = KeyError\n"
                                 "sys.excepthook = lambda *a: sys.exit(0)\n",
        "int that is not 0": "import sys\nclass Zero(int):\n    def __eq__(self, other): return False\n"
                             "    __hash__ = int.__hash__\nsys.exit(Zero(0))\n",
        "code property": "import sys\nclass Exit(SystemExit):\n    code = property(lambda self: sys.exit(0))\n"
                         "sys.excepthook = lambda *a: sys.exit(0)\nraise Exit(1)\n",
        "status 256": "import sys\nsys.exit(256)\n",
        "code that changes": "import sys\nclass Exit(SystemExit):\n    codes = iter([1, 1, 256, 256])\n"
                             "    code = property(lambda self: next(self.codes))\nraise Exit()\n",
        "stderr that exits": "import sys\nclass Exiting:\n    def write(self, text): sys.exit(0)\n"
                             "    def flush(self): pass\nsys.stderr = Exiting()\nsys.excepthook = lambda *a: sys.exit(0)\n",
        "fresh posix": "import _imp\nclass Spec:\n    name = 'posix'\n"
                       "try:\n    _imp.create_builtin(Spec())._exit(0)\nexcept PermissionError:\n    pass\n",
    }
    if "python" in mode.get("disable", ()):
        pytest.skip("the exit status after a failure is the Python layers' to keep")
    for label, route in routes.items():
        result = run_program(route + failure, **mode)
        assert not result.passed, (label, result)
    assert run_program("import time\nprint(time.time() > 0)\n", **mode).passed  # builtin modules still import


def test_layers_are_reported(layers_here):
    assert {"process", "rlimits", "audit-hook", "python-guard"} <= layers_here
    without_python = run_program("pass\n", disable=("python",))
    assert without_python.passed and not {"audit-hook", "python-guard"} & set(without_python.layers)
    assert set(without_python.layers) - {"process", "rlimits"} <= set(KERNEL_LAYERS)
    with pytest.raises(ValueError):
        run_program("pass\n", disable=("everything",))

