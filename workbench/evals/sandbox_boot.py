"""The sandboxed process's own first code. sandbox.py says which layers exist and what each stops.

It runs as a script, `python -I -S -B sandbox_boot.py CONFIG_JSON`, started by sandbox.run_program with an
empty environment, in its own session, in the program's temporary folder. It imports nothing from
workbench (the package is not on its sys.path) and only light standard modules: every HumanEval task
pays for its start.

Three processes, one job each:
- the launcher (the process run_program starts) enters new namespaces. A new PID namespace only
  applies to children, so it forks and waits;
- the supervisor (PID 1 of the new namespace; the launcher itself without one) builds the program's
  view of the file system while it still may, forks the program, waits for it and writes its exit
  status on the report pipe. When PID 1 exits, the kernel kills everything left in its namespace;
- the program process gives up its privileges, sets its limits, restricts itself with Landlock and
  seccomp, installs the Python layers, reports which layers hold, closes the report pipe and runs the
  program.
"""

from __future__ import annotations

import _imp
import _signal
import _thread
import builtins
import codecs
import ctypes
import json
import os
import posix
import resource
import struct
import sys
import types  # imported before the audit hook: its import reads a traceback's frame, which the hook refuses

NOBODY = 65534
LINUX = sys.platform.startswith("linux")  # elsewhere only the process, rlimits and Python layers exist
LIBC = ctypes.CDLL(None, use_errno=True)
if LINUX:
    LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    LIBC.syscall.restype = ctypes.c_long

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MOUNT_OPTION_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024,
                      "nodiratime": 2048, "relatime": 1 << 21}  # a read-only remount must keep these
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4

# Landlock (Linux 5.13+; the ABI version says which rights the kernel knows)
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446  # on every architecture
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_DIR, FS_MAKE_REG = 1 << 4, 1 << 5, 1 << 7, 1 << 8
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ = FS_READ_FILE | FS_READ_DIR
WORK = (READ | FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG | FS_REFER
        | FS_TRUNCATE)
SYSTEM_LIBRARIES = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache",
                    "/etc/localtime", "/usr/share/zoneinfo")  # what extension modules load at import time
DEVICES = {"/dev/null": FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE, "/dev/zero": FS_READ_FILE,
           "/dev/urandom": FS_READ_FILE, "/dev/random": FS_READ_FILE}

# seccomp: system calls a HumanEval program never needs, refused with EPERM whatever the route to them
DENIED_SYSCALLS = (
    "socket", "socketpair", "connect", "accept", "accept4", "bind", "listen",  # network
    "clone", "clone3", "fork", "vfork", "execve", "execveat",  # processes and threads
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal", "pidfd_open",
    "pidfd_getfd", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "setsid", "setpgid",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "chdir", "fchdir",
    "mknod", "mknodat", "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat",
    "fchmodat2", "chown", "fchown", "lchown", "fchownat", "name_to_handle_at", "open_by_handle_at",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog",
    "memfd_create", "memfd_secret",  # memory outside the address-space limit
)
SYSCALL_NUMBERS = {  # from asm/unistd_64.h and asm-generic/unistd.h
    "x86_64": dict(
        socket=41, socketpair=53, connect=42, accept=43, accept4=288, bind=49, listen=50, clone=56,
        clone3=435, fork=57, vfork=58, execve=59, execveat=322, kill=62, tkill=200, tgkill=234,
        rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, pidfd_send_signal=424, pidfd_open=434, pidfd_getfd=438,
        ptrace=101, process_vm_readv=310, process_vm_writev=311, kcmp=312, setsid=112, setpgid=109, mount=165,
        umount2=166, pivot_root=155, chroot=161, unshare=272, setns=308, open_tree=428, move_mount=429,
        fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, chdir=80, fchdir=81, mknod=133,
        mknodat=259, link=86, linkat=265, symlink=88, symlinkat=266, chmod=90, fchmod=91, fchmodat=268,
        fchmodat2=452, chown=92, fchown=93, lchown=94, fchownat=260, name_to_handle_at=303,
        open_by_handle_at=304, bpf=321, perf_event_open=298, userfaultfd=323, io_uring_setup=425,
        io_uring_enter=426, io_uring_register=427, keyctl=250, add_key=248, request_key=249, init_module=175,
        finit_module=313, delete_module=176, kexec_load=246, kexec_file_load=320, reboot=169, swapon=167,
        swapoff=168, acct=163, quotactl=179, syslog=103, memfd_create=319, memfd_secret=447, capset=126),
    "aarch64": dict(
        socket=198, socketpair=199, connect=203, accept=202, accept4=242, bind=200, listen=201, clone=220,
        clone3=435, execve=221, execveat=281, kill=129, tkill=130, tgkill=131, rt_sigqueueinfo=138,
        rt_tgsigqueueinfo=240, pidfd_send_signal=424, pidfd_open=434, pidfd_getfd=438, ptrace=117,
        process_vm_readv=270, process_vm_writev=271, kcmp=272, setsid=157, setpgid=154, mount=40, umount2=39,
        pivot_root=41, chroot=51, unshare=97, setns=268, open_tree=428, move_mount=429, fsopen=430,
        fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, chdir=49, fchdir=50, mknodat=33, linkat=37,
        symlinkat=36, fchmod=52, fchmodat=53, fchmodat2=452, fchown=55, fchownat=54, name_to_handle_at=264,
        open_by_handle_at=265, bpf=280, perf_event_open=241, userfaultfd=282, io_uring_setup=425,
        io_uring_enter=426, io_uring_register=427, keyctl=219, add_key=217, request_key=218, init_module=105,
        finit_module=273, delete_module=106, kexec_load=104, kexec_file_load=294, reboot=142, swapon=224,
        swapoff=225, acct=89, quotactl=60, syslog=116, memfd_create=279, memfd_secret=447, capset=91),
}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
BPF_LOAD_WORD, BPF_JUMP_EQUAL, BPF_JUMP_AT_LEAST, BPF_RETURN = 0x20, 0x15, 0x35, 0x06
EPERM = 1

# The audit hook's lists (copied into frozensets and tuples inside its closure when it is installed)
REFUSED_IMPORTS = (
    "socket", "_socket", "ssl", "_ssl", "select", "selectors", "subprocess", "_posixsubprocess",
    "multiprocessing", "_multiprocessing", "_posixshmem", "ctypes", "_ctypes", "pty", "tty", "termios",
    "fcntl", "resource", "concurrent", "asyncio", "_asyncio", "urllib.request", "http.client",
    "http.server", "xmlrpc", "ftplib", "smtplib", "imaplib", "poplib", "telnetlib", "webbrowser", "sqlite3",
    "_sqlite3", "gc", "mmap", "faulthandler", "_testcapi", "_testinternalcapi", "_testbuffer",
    "_testmultiphase", "_testclinic", "_testimportmultiple", "_xxtestfuzz", "_ctypes_test",
    "_xxsubinterpreters", "_xxinterpchannels",
)
REFUSED_EVENTS = (  # prefixes
    "socket.", "subprocess.", "_posixsubprocess", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.fork", "os.kill", "os.putenv", "os.unsetenv", "os.chdir", "os.chmod", "os.chown", "os.chflags",
    "os.lchflags", "os.link", "os.symlink", "os.truncate", "os.setxattr", "os.removexattr", "ctypes.",
    "resource.", "signal.", "sys.addaudithook", "sys.settrace", "sys.setprofile", "gc.", "sqlite3.",
    "mmap.", "fcntl.", "pty.", "webbrowser.", "urllib.", "syslog.", "shutil.chown",
)
PATH_EVENTS = (  # event, where its paths are, where its dir_fd arguments are (-1 when none was given)
    ("os.mkdir", (0,), (2,)), ("os.remove", (0,), (1,)), ("os.rmdir", (0,), (1,)),
    ("os.rename", (0, 1), (2, 3)), ("os.utime", (0,), (3,)),
)
FRAME_ATTRIBUTES = ("tb_frame", "gi_frame", "cr_frame", "ag_frame")
HIDDEN_TREES = ("/proc", "/sys")
POSIX_WITHOUT_AUDIT_EVENT = ("mkfifo", "mknod", "_exit", "setsid", "setpgid", "setpgrp", "pidfd_open",
                             "chroot", "fchdir", "fchmod", "fchown", "lchown", "forkpty", "openpty",
                             "login_tty", "sched_setaffinity", "memfd_create")
NO_AUDIT_EVENT = (  # functions that reach the kernel without an audit event: replaced by the guard
    (_thread, ("start_new_thread", "start_new", "start_joinable_thread")),
    (_signal, ("signal", "set_wakeup_fd", "siginterrupt", "setitimer", "pthread_kill", "pidfd_send_signal")),
    (posix, POSIX_WITHOUT_AUDIT_EVENT),
    (os, POSIX_WITHOUT_AUDIT_EVENT),  # os copied them from posix when it was imported
    (_imp, ("create_builtin",)),  # a fresh posix or _thread module, none of whose functions is replaced
)


def main(config: dict) -> None:
    with open("program.py", encoding="utf-8") as handle:
        source = handle.read()  # before a fresh file system may cover the folder
    disabled = frozenset(config["disable"])
    namespaces = enter_namespaces() if LINUX and "namespaces" not in disabled else ()
    if "pid-ns" in namespaces:
        supervisor = os.fork()
        if supervisor:  # the launcher: only the supervisor knows the program's fate
            code = wait_for(supervisor)
            os._exit(code if code >= 0 else 128 - code)
    supervise(config, source, namespaces, disabled)


def enter_namespaces() -> tuple[str, ...]:
    """New mount, PID, network, IPC and UTS namespaces; as a user other than root, inside a new user
    namespace (which lets an unprivileged user create the others). () when the kernel refuses."""
    root = os.geteuid() == 0
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    if LIBC.unshare(flags | (0 if root else CLONE_NEWUSER)) != 0:
        return ()
    if not root:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as handle:
                handle.write(text)
    return (() if root else ("user-ns",)) + ("mount-ns", "pid-ns", "net-ns", "ipc-ns")


def wait_for(pid: int) -> int:
    """pid's exit status as Popen reports it (negative: the signal that killed it), reaping orphans too
    (the supervisor is PID 1 of its namespace)."""
    while True:
        try:
            reaped, status = os.wait()
        except ChildProcessError:
            return -1
        if reaped == pid:
            return os.waitstatus_to_exitcode(status)


def supervise(config: dict, source: str, namespaces: tuple[str, ...], disabled: frozenset[str]) -> None:
    home, report = config["home"], config["report_fd"]
    layers = ["process", *namespaces]
    as_nobody = LINUX and os.geteuid() == 0 and "user-ns" not in namespaces and "uid" not in disabled
    python_moved = None
    if "mount-ns" in namespaces:
        python_moved, as_nobody, file_system_layers = build_file_system(config, source, as_nobody,
                                                                         "pid-ns" in namespaces)
        layers += file_system_layers
    elif as_nobody:
        as_nobody = all(reachable_by_others(path) for path in python_paths())
        if as_nobody:
            os.chown(home, NOBODY, NOBODY)
    program = os.fork()
    if program == 0:
        run_as_program(config, source, layers, as_nobody, python_moved, disabled)
        return  # the program ended normally: the interpreter exits 0
    code = wait_for(program)
    os.write(report, (json.dumps({"returncode": code}) + "\n").encode())
    os._exit(code if code >= 0 else 128 - code)


def build_file_system(config: dict, source: str, as_nobody: bool,
                      new_pid_namespace: bool) -> tuple[tuple[str, str] | None, bool, list[str]]:
    """In the new mount namespace: a /proc that shows only this namespace's processes, every mount
    read-only, and the program's folder a small tmpfs (the disk quota). Returns where the Python
    installation was bind-mounted for the nobody user (None if it needed no move), whether the program
    can run as nobody, and the layers built."""
    home = config["home"]
    layers = []
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here may reach the machine's mounts
    if new_pid_namespace:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    python_moved = None
    if as_nobody and not all(reachable_by_others(path) for path in python_paths()):
        # The interpreter lives where nobody may not look (pyenv under /root, say): show it elsewhere.
        old, new = sys.base_prefix, config["python_dir"]
        as_nobody = (all(path.startswith(old + "/") for path in python_paths())
                     and mount(old, new, None, MS_BIND | MS_REC)
                     and all(reachable_by_others(new + path[len(old):]) for path in python_paths()))
        python_moved = (old, new) if as_nobody else None
    if remount_everything_read_only():
        layers.append("read-only-fs")
    owner = NOBODY if as_nobody else 0
    options = f"size={config['disk']},nr_inodes=4096,mode=0700,uid={owner},gid={owner}"
    if mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options):
        layers.append("disk-quota")
    os.chdir(home)  # the tmpfs, not the folder beneath it
    with open("program.py", "w", encoding="utf-8") as handle:
        handle.write(source)  # for the source lines in tracebacks
    return python_moved, as_nobody, layers


def mount(source: str | None, target: str, kind: str | None, flags: int, options: str | None = None) -> bool:
    def encode(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    return LIBC.mount(encode(source), encode(target), encode(kind), flags, encode(options)) == 0


def remount_everything_read_only() -> bool:
    everything = True
    with open("/proc/self/mountinfo", "rb") as handle:
        for line in handle:
            fields = line.split()
            target = os.fsdecode(codecs.escape_decode(fields[4])[0])  # "\040" is a space
            kept = sum(MOUNT_OPTION_FLAGS.get(option, 0) for option in fields[5].decode().split(","))
            everything &= mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)
    return everything


def python_paths() -> list[str]:
    return [path for path in sys.path if os.path.isdir(path)]


def reachable_by_others(path: str) -> bool:
    """Whether a user who owns nothing (nobody) may walk down to `path` and list it."""
    walked = "/"
    for part in path.strip("/").split("/"):
        if not os.stat(walked).st_mode & 0o001:
            return False
        walked = os.path.join(walked, part)
    return os.stat(walked).st_mode & 0o005 == 0o005


def run_as_program(config: dict, source: str, layers: list[str], as_nobody: bool,
                   python_moved: tuple[str, str] | None, disabled: frozenset[str]) -> None:
    home, report = config["home"], config["report_fd"]
    if python_moved:
        old, new = python_moved

        def moved(path: str) -> str:
            return new + path[len(old):] if path.startswith(old + "/") else path

        sys.path[:] = map(moved, sys.path)
        for module in list(sys.modules.values()):  # packages imported already find their submodules there
            search = getattr(module, "__path__", None)
            if isinstance(search, list):
                search[:] = map(moved, search)
        sys.path_importer_cache.clear()
    if as_nobody:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        layers.append("uid-nobody")
    elif LINUX and os.geteuid() == 0 and "uid" not in disabled and drop_capabilities():
        layers.append("no-capabilities")
    set_limits(config)
    layers.append("rlimits")
    if LINUX:
        LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        python_root = python_moved[1] if python_moved else sys.base_prefix
        if "landlock" not in disabled and restrict_with_landlock(home, python_root):
            layers.append("landlock")
        if "seccomp" not in disabled and restrict_with_seccomp():
            layers.append("seccomp")
    if "python" not in disabled:
        shut_doors_without_audit_events()
        install_audit_hook(home)
        layers += ["python-guard", "audit-hook"]
        for name in list(sys.modules):
            if name in REFUSED_IMPORTS or name.partition(".")[0] in REFUSED_IMPORTS:
                del sys.modules[name]  # what the boot itself imported (ctypes, resource) is gone too
    os.write(report, (json.dumps({"layers": layers}) + "\n").encode())
    os.close(report)
    run(source)


def drop_capabilities() -> bool:
    """Root that cannot run as nobody (or root of a user namespace) keeps its uid but loses every
    capability: no overriding file permissions, no mounts, no raising limits."""
    number = SYSCALL_NUMBERS.get(os.uname().machine, {}).get("capset")
    if number is None:
        return False
    header = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0))  # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(24)  # effective, permitted, inheritable: all empty
    LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    return syscall(number, header, data) == 0


def syscall(number: int, *args: int | ctypes.Array | None) -> int:
    """libc's syscall(2). It is variadic: integers must go as C longs; buffers and None as pointers."""
    return LIBC.syscall(ctypes.c_long(number), *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))


def set_limits(config: dict) -> None:
    memory, cpu, file_bytes = config["memory"], config["cpu"], config["fsize"]
    for name, value in (("RLIMIT_AS", memory), ("RLIMIT_DATA", memory), ("RLIMIT_CPU", (cpu, cpu + 1)),
                        ("RLIMIT_FSIZE", file_bytes), ("RLIMIT_NOFILE", 64), ("RLIMIT_NPROC", 0),
                        ("RLIMIT_CORE", 0), ("RLIMIT_MEMLOCK", 0), ("RLIMIT_MSGQUEUE", 0)):
        if hasattr(resource, name):  # the last ones are Linux's
            resource.setrlimit(getattr(resource, name), value if isinstance(value, tuple) else (value, value))


def restrict_with_landlock(home: str, python_root: str) -> bool:
    """Writes only in the program's folder; reads only there, in the Python installation, the system
    libraries and four devices (no /proc, no project, no home folders); no TCP bind or connect (ABI 4+);
    no signals or abstract unix sockets beyond this process (ABI 6+)."""
    abi = syscall(LANDLOCK_CREATE_RULESET, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return False
    handled = (1 << 13) - 1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    handled |= FS_IOCTL_DEV if abi >= 5 else 0
    attributes = struct.pack("QQQ", handled, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = syscall(LANDLOCK_CREATE_RULESET, ctypes.create_string_buffer(attributes, size), size, 0)
    if ruleset < 0:
        return False
    try:
        readable = [python_root, *python_paths(), *SYSTEM_LIBRARIES]
        rules = [(home, WORK)] + [(path, READ) for path in readable] + list(DEVICES.items())
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # not on this machine
            try:
                if not os.path.isdir(path):
                    access &= FS_FILE_RIGHTS
                rule = ctypes.create_string_buffer(struct.pack("=Qi", access & handled, fd), 12)
                if syscall(LANDLOCK_ADD_RULE, ruleset, 1, rule, 0) != 0:  # LANDLOCK_RULE_PATH_BENEATH
                    return False
            finally:
                os.close(fd)
        return syscall(LANDLOCK_RESTRICT_SELF, ruleset, 0) == 0
    finally:
        os.close(ruleset)


def seccomp_filter(machine: str) -> bytes:
    """A classic BPF program: another architecture's calling convention is killed, x32 calls and the
    denied calls get EPERM, everything else is allowed."""
    table = SYSCALL_NUMBERS[machine]
    numbers = sorted({table[name] for name in DENIED_SYSCALLS if name in table})

    def instruction(code: int, k: int, then: int = 0) -> bytes:  # struct sock_filter; "else" is always 0
        return struct.pack("HBBI", code, then, 0, k)

    program = [instruction(BPF_LOAD_WORD, 4),  # seccomp_data.arch
               instruction(BPF_JUMP_EQUAL, AUDIT_ARCH[machine], then=1),
               instruction(BPF_RETURN, SECCOMP_RET_KILL_PROCESS),
               instruction(BPF_LOAD_WORD, 0)]  # seccomp_data.nr
    if machine == "x86_64":
        program.append(instruction(BPF_JUMP_AT_LEAST, X32_SYSCALL_BIT, then=len(numbers) + 1))
    for index, number in enumerate(numbers):
        program.append(instruction(BPF_JUMP_EQUAL, number, then=len(numbers) - index))
    program.append(instruction(BPF_RETURN, SECCOMP_RET_ALLOW))
    program.append(instruction(BPF_RETURN, SECCOMP_RET_ERRNO | EPERM))  # where every jump above lands
    return b"".join(program)


def restrict_with_seccomp() -> bool:
    machine = os.uname().machine
    if machine not in SYSCALL_NUMBERS:
        return False
    program = seccomp_filter(machine)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = ctypes.create_string_buffer(struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(buffer)))
    return LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) == 0


def shut_doors_without_audit_events() -> None:
    def refuse(*args, **kwargs):
        raise PermissionError("sandbox: not allowed here (threads, signals, fifos, sessions, early exits)")

    for name in sys.builtin_module_names:  # each built-in module made now, before its factory is shut
        if name not in REFUSED_IMPORTS:
            __import__(name)
    for module, names in NO_AUDIT_EVENT:
        for name in names:
            if hasattr(module, name):
                setattr(module, name, refuse)


def install_audit_hook(home: str) -> None:
    """PEP 578 hook; it cannot be removed once installed. Its state lives in its closure, as immutable
    values and builtin functions captured now: rebinding globals or builtins later changes nothing. The
    hook function itself is referenced only by the interpreter once this returns, and the routes to it
    (gc, frames from tracebacks and generators, sys._getframe, trace functions) are refused."""
    refused_imports, refused_events = frozenset(REFUSED_IMPORTS), tuple(REFUSED_EVENTS)
    path_events, frame_attributes, hidden_trees = PATH_EVENTS, frozenset(FRAME_ATTRIBUTES), HIDDEN_TREES
    inside = home.rstrip("/") + "/"
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    kind, plain_str, plain_bytes, plain_int = type, str, bytes, int
    lstat, readlink = os.lstat, os.readlink  # builtin functions: nothing in them can be rebound
    refused, refused_import, no_frame, missing = PermissionError, ImportError, ValueError, OSError

    def resolve(path):
        """The absolute path with every symlink followed, like the kernel's walk; None for a path that
        is not a plain str or bytes (a PathLike could answer differently the second time it is asked)."""
        if kind(path) is plain_bytes:
            path = path.decode("utf-8", "surrogateescape")
        if kind(path) is not plain_str:
            return None
        pending, parts, links = (path if path.startswith("/") else inside + path).split("/"), [], 0
        pending.reverse()
        while pending:
            part = pending.pop()
            if part == "" or part == ".":
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(part)
            try:
                mode = lstat("/" + "/".join(parts)).st_mode
            except missing:
                continue  # does not exist (yet): nothing to follow
            if mode & 0o170000 == 0o120000 and links < 40:
                links += 1
                target = readlink("/" + "/".join(parts))
                parts.pop()
                if target.startswith("/"):
                    parts = []
                more = target.split("/")
                more.reverse()
                pending += more
        return "/" + "/".join(parts)

    def writable(path):
        where = resolve(path)
        return where is not None and (where + "/").startswith(inside)

    def hidden(path):
        where = resolve(path)
        if where is None:
            return True
        for tree in hidden_trees:
            if where == tree or where.startswith(tree + "/"):
                return True
        return False

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if kind(path) is plain_int:
                return  # an open descriptor: it was checked when it was opened
            if mode is None and not resolve_is_absolute(path):
                raise refused("sandbox: os.open needs an absolute path (a dir_fd could point anywhere)")
            if kind(flags) is plain_int and flags & write_flags:
                if not writable(path):
                    raise refused(f"sandbox: writing {path!r} is not allowed")
            elif hidden(path):
                raise refused(f"sandbox: reading {path!r} is not allowed")
        elif event == "import":
            name = args[0]
            if kind(name) is plain_str and (name in refused_imports
                                            or name.partition(".")[0] in refused_imports):
                raise refused_import(f"sandbox: import of {name} is not allowed")
        elif event == "os.listdir" or event == "os.scandir":
            if kind(args[0]) is not plain_int and args[0] is not None and hidden(args[0]):
                raise refused(f"sandbox: listing {args[0]!r} is not allowed")
        elif event == "object.__getattr__":
            if args[1] in frame_attributes:
                raise refused(f"sandbox: {args[1]} is not allowed")
        elif event == "sys._getframe" or event == "sys._current_frames" or event == "sys._current_exceptions":
            # ValueError, as for a call stack that is too short: the standard library's callers expect it
            raise no_frame(f"sandbox: {event} is not allowed")
        elif event.startswith(refused_events):
            raise refused(f"sandbox: {event} is not allowed")
        else:
            for name, paths, dir_fds in path_events:
                if event == name:
                    for index in dir_fds:
                        if args[index] != -1:
                            raise refused(f"sandbox: {event} with dir_fd is not allowed")
                    for index in paths:
                        if not writable(args[index]):
                            raise refused(f"sandbox: {event} {args[index]!r} is not allowed")

    def resolve_is_absolute(path):
        if kind(path) is plain_bytes:
            return path.startswith(b"/")
        return kind(path) is plain_str and path.startswith("/")

    sys.addaudithook(hook)


def run(source: str) -> None:
    """The program runs as __main__ in a module of its own. A HumanEval program passes by reaching its
    last line: an exit with status 0 before its end fails, and so does any exception. The exit status
    of a failure is decided here, never by what the program can change on the way out (sys.excepthook,
    sys.stderr, the builtins this code names, an exit code that wraps around to 0): every name used
    after the program started was taken before it did."""
    module = types.ModuleType("__main__")
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    code = compile(source, "program.py", "exec")
    any_exception, exit_type, is_instance, kind, plain_int = BaseException, SystemExit, isinstance, type, int
    show_exception, say = sys.__excepthook__, print
    try:
        exec(code, vars(module))
        return
    except any_exception as error:
        status = 1
        try:  # telling what happened is best effort: the program may have broken anything it reaches
            given = error.code if is_instance(error, exit_type) else error  # read once: a property may change
            if given is error:
                show_exception(kind(error), error, error.__traceback__)
            elif kind(given) is plain_int and 1 <= given <= 255:
                status = given
            elif given is None or kind(given) is plain_int and given == 0:
                say("sandbox: the program exited with status 0 before its end", file=sys.stderr)
            else:
                say(given, file=sys.stderr)
        except any_exception:
            pass
    raise exit_type(status)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
