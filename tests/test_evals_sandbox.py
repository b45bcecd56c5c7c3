"""The HumanEval sandbox: real programs in a real separate process, each limit actually hit."""

from __future__ import annotations

import dis
import json
import os
import re
import socket
import tempfile
import types
from pathlib import Path

import pytest

from workbench.evals import humaneval, sandbox_boot
from workbench.evals.sandbox import run_program
from workbench.tasks import humaneval as humaneval_task

FIXTURES = Path(__file__).parent / "fixtures" / "evals"


def test_canonical_solutions_pass_and_wrong_ones_fail():
    problem = humaneval_task.load(FIXTURES / "humaneval" / "HumanEval.jsonl")[0]
    good = run_program(humaneval_task.assemble_program(problem, problem.canonical_solution), timeout=20)
    assert good.status == "passed" and good.returncode == 0, good.stderr
    bad = run_program(humaneval_task.assemble_program(problem, "    return not True\n"), timeout=20)
    assert bad.status == "failed" and "AssertionError" in bad.stderr


def test_infinite_loop_times_out():
    result = run_program("while True:\n    pass\n", timeout=1.5)
    assert result.status == "timeout" and 1.4 < result.seconds < 10


def test_sleeping_forever_times_out_too():
    result = run_program("import time\ntime.sleep(60)\n", timeout=1.0)
    assert result.status == "timeout" and result.seconds < 10


def test_memory_bomb_is_stopped():
    result = run_program("blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))\n",
                         timeout=20, memory_mb=256)
    assert result.status == "memory" and not result.passed


def test_network_is_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)  # a connection would wait in the backlog even though nobody accepts it
    port = server.getsockname()[1]
    attempts = [
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}))\n",
        f"import sys\nsys.modules.pop('socket', None)\nimport _socket\n_socket.socket().connect(('127.0.0.1', {port}))\n",
        f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/')\n",
        f"__import__('importlib').import_module('socket').socket().connect(('127.0.0.1', {port}))\n",
    ]
    try:
        for program in attempts:
            result = run_program(program, timeout=10)
            assert result.status == "failed", (program, result)
            assert "sandbox" in result.stderr, result.stderr
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected
    finally:
        server.close()


def test_no_processes_no_writes_outside_its_folder(tmp_path):
    target = tmp_path / "written.txt"
    for program in [
        "import os\nos.system('echo hi')\n",
        "import subprocess\nsubprocess.run(['true'])\n",
        "import os\nos.fork()\n",
        "import posix\nposix.system('true')\n",
        f"open({str(target)!r}, 'w').write('x')\n",
        "import ctypes\n",
        "import resource\n",
    ]:
        result = run_program(program, timeout=10)
        assert result.status == "failed", (program, result)
    assert not target.exists()
    # its own temporary folder is writable, and it sees an empty environment
    local = run_program("import os, json\nopen('x.txt', 'w').write('ok')\nprint(json.dumps(dict(os.environ)))\n")
    assert local.passed and set(json.loads(local.stdout)) <= {"LC_CTYPE"}


def test_huge_output_is_bounded():
    result = run_program("while True:\n    print('x' * 10000)\n", timeout=10)
    assert not result.passed and len(result.stdout) <= 8192


def test_its_folder_is_gone_afterwards_and_the_machine_is_untouched():
    result = run_program("import os\nprint(os.getcwd())\nopen('kept.txt', 'w').write('x')\n")
    assert result.passed, result.stderr
    folder = Path(result.stdout.strip())
    assert folder.name == "work" and not folder.parent.exists()
    with open(Path(tempfile.gettempdir()) / f"picochat-probe-{os.getpid()}", "w") as probe:
        probe.write("the machine's own mounts stay writable")  # the read-only remounts stayed inside
    os.unlink(probe.name)


def test_humaneval_scores_say_which_sandbox_layers_held():
    problem = humaneval_task.load(FIXTURES / "humaneval" / "HumanEval.jsonl")[0]
    scored = humaneval.score([problem], [problem.canonical_solution], timeout=20)
    layers = scored.details["sandbox_layers"]
    assert {"process", "rlimits", "audit-hook"} <= set(layers)
    assert layers == list(run_program("pass\n").layers)


def test_the_audit_hook_looks_up_no_global_or_builtin_name():
    """Everything the hook uses was captured in its closure when it was installed, so rebinding a
    global or a builtin (isinstance, PermissionError, os.path...) later cannot change its decisions."""
    nested = [const for const in sandbox_boot.install_audit_hook.__code__.co_consts
              if isinstance(const, types.CodeType)]
    assert {code.co_name for code in nested} >= {"hook", "resolve", "writable", "hidden"}
    for code in nested:
        lookups = [i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")]
        assert not lookups, (code.co_name, lookups)


HEADERS = {"x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
           "aarch64": Path("/usr/include/asm-generic/unistd.h")}


@pytest.mark.parametrize("machine", list(HEADERS))
def test_the_seccomp_filter_names_the_right_system_calls(machine):
    """A wrong number would let the call through (and refuse another): check the table against the
    kernel's headers where this machine has them (fchmodat2 and memfd_secret are newer than some)."""
    table = sandbox_boot.SYSCALL_NUMBERS[machine]
    missing = set(sandbox_boot.DENIED_SYSCALLS) - set(table)
    assert missing <= ({"fork", "vfork", "mknod", "link", "symlink", "chmod", "chown", "lchown"}
                       if machine == "aarch64" else set())  # aarch64 has only the *at forms
    if not HEADERS[machine].exists():
        pytest.skip(f"{HEADERS[machine]} is not on this machine")
    defined = dict(re.findall(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", HEADERS[machine].read_text()))
    assert "socket" in defined and "clone3" in defined
    wrong = {name: number for name, number in table.items() if name in defined and int(defined[name]) != number}
    assert not wrong
    assert len(sandbox_boot.seccomp_filter(machine)) % 8 == 0
