"""Run untrusted Python (model-written code) in a contained subprocess.

    result = run_sandboxed("print(sum(range(10)))")      # SandboxResult: exit code, stdout, stderr, ...
    result.status                                          # "exit 0", "killed: wall time limit 5 s", ...
    sandbox_layers()                                       # which containment layers this machine gives

A run is a fresh `sys.executable -I -B` process in its own session, with a scrubbed environment (PATH,
HOME and TMPDIR = its work dir, LANG, one thread for numeric libraries: the parent's variables, secrets
included, are not passed) and a fresh temp dir as its work dir. Before the program runs, the process
contains itself, in this order (this file is also the child's bootstrap script):

1. namespaces: its own network namespace (no interfaces, so no network at all) and mount namespace;
   as a non-root user this needs an unprivileged user namespace.
2. filesystem (needs the mount namespace): every mount is remounted read-only; the work dir becomes a
   small private tmpfs, the only writable place; directories other users may not enter (e.g. /root,
   where pyenv may keep the interpreter) are covered by an empty tmpfs with only the interpreter's
   library dirs bound back, so a stranger uid can run Python and sees nothing else of them.
3. rlimits: CPU time, address space, file size (which also bounds captured stdout and stderr), open
   files, no core dumps, and a process limit (RLIMIT_NPROC): as root with 4; as a non-root user in its
   own user namespace (Linux >= 5.14 counts a uid's processes per user namespace, so the limit is the
   run's own); as a non-root user without one, the user's running processes plus the limit.
4. user (root only): a fresh random uid and gid per run, no groups. RLIMIT_NPROC counts per uid and does
   not apply to root, so only this makes the process limit effective; it also denies reading the
   parent's /proc/<pid>/environ and lets the parent kill every process of the run by uid afterwards.
   Always no_new_privs: no setuid binary regains privileges.
5. an audit hook (sys.addaudithook; on unless a test turns it off) that refuses socket connect, bind,
   send and name lookups, process creation (fork, exec, spawn, os.system, subprocess), ctypes, writes
   outside the work dir, reads of other processes' /proc entries, signals to other processes and gc
   introspection, with a PermissionError the program sees. It is the only layer where namespaces are
   unavailable; Python-level hooks can be got around by determined code, so the kernel layers above are
   the real containment. World-readable files stay readable.

The parent waits at most the wall-clock limit, then kills the process group; afterwards it kills what
is left of the group and (as root) every process of the run's uid, and removes the work dir. Layers that
are unavailable are reported in `SandboxResult.layers` ("unavailable: why") and logged once as a warning.

Fail closed: `run_sandboxed(code, require=REQUIRED_LAYERS)` refuses to run the program (the bootstrap
stops after containing itself, before the program is written or run) when one of the named layers is
unavailable; the result then has `refused` (the missing layers) and the status "refused: ...".
Linux only (namespaces, /proc, pidfd). This module imports only the standard library: it runs as the
child's bootstrap before anything else.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import re
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

KiB, MiB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class SandboxLimits:
    wall_time_s: float = 5.0  # then the process group is killed
    cpu_time_s: int = 5  # RLIMIT_CPU (whole seconds): SIGXCPU, then SIGKILL a second later
    memory_bytes: int = 512 * MiB  # RLIMIT_AS: allocations beyond it raise MemoryError
    file_size_bytes: int = 8 * MiB  # RLIMIT_FSIZE: any file written, stdout and stderr included
    disk_bytes: int = 64 * MiB  # size of the work dir's tmpfs
    max_processes: int = 16  # RLIMIT_NPROC of the run's own uid (threads count)
    max_open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 8 * KiB  # how much of stdout and of stderr is returned (head and tail)


@dataclass
class SandboxResult:
    exit_code: int | None  # -N when ended by signal N; None when the sandbox could not run the program
    stdout: str
    stderr: str
    wall_time_s: float
    cpu_time_s: float = 0.0  # of the main process
    killed: bool = False  # ended by a signal (wall clock, CPU limit, ...)
    reason: str | None = None  # the limit or blocked operation that ended the program, if one did
    layers: dict[str, str] = field(default_factory=dict)  # containment layer -> what it did this run
    refused: tuple[str, ...] = ()  # the required layers that were unavailable, so the program did not run

    @property
    def status(self) -> str:
        """One line for the model: "exit 0", "exit 1 (memory limit 512 MiB)", "killed: wall time limit 5 s"
        (or "sandbox error: ..." when the program could not be run)."""
        if self.refused:
            return f"refused: {self.reason}"
        if self.exit_code is None:
            return f"sandbox error: {self.reason}"
        if self.killed:
            return f"killed: {self.reason}"
        return f"exit {self.exit_code}" + (f" ({self.reason})" if self.reason else "")


REQUIRED_LAYERS = ("network", "filesystem")  # what failing closed requires (the python tool's default)


def run_sandboxed(code: str, limits: SandboxLimits = SandboxLimits(), *, audit_hook: bool = True,
                  require: tuple[str, ...] = ()) -> SandboxResult:
    """Run `code` as a Python program in the sandbox and report what happened; never raises on the code.

    `audit_hook=False` leaves out the in-process hook, to check that the kernel layers contain a program
    on their own (tests); runs for models keep it. `require`: layers (e.g. REQUIRED_LAYERS) without which
    the program is not run at all; the result is then refused (`refused` names the missing ones).
    """
    started = time.perf_counter()
    uid = _fresh_id() if os.geteuid() == 0 else None
    workdir = tempfile.mkdtemp(prefix="rlvr-sandbox-", dir=_workdir_parent())
    report_read, report_write = os.pipe()
    config = {"workdir": workdir, "uid": uid, "limits": asdict(limits), "audit_hook": audit_hook,
              "report_fd": report_write, "require": list(require)}
    command = [sys.executable, "-I", "-B", os.path.abspath(__file__), json.dumps(config)]
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)  # used as it is where no tmpfs can be mounted over it
        with tempfile.TemporaryFile() as program, tempfile.TemporaryFile() as out, \
                tempfile.TemporaryFile() as err:
            program.write(code.encode("utf-8", "surrogatepass"))  # lone surrogates: the program's SyntaxError
            program.seek(0)
            try:
                proc = subprocess.Popen(command, stdin=program, stdout=out, stderr=err, cwd=workdir,
                                        env=_child_env(workdir), start_new_session=True,
                                        pass_fds=(report_write,))
            except OSError as e:
                wall = time.perf_counter() - started
                return SandboxResult(None, "", "", wall, reason=f"could not start: {e}")
            finally:
                os.close(report_write)
            status, usage, timed_out = _wait(proc.pid, limits.wall_time_s)
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by _wait (for rusage), not by Popen
            wall = time.perf_counter() - started
            _kill_leftovers(proc.pid, uid)
            report = _read_report(report_read)
            stdout, stdout_size = _read_capped(out, limits.output_bytes)
            stderr, stderr_size = _read_capped(err, limits.output_bytes)
            err.seek(max(0, stderr_size - 1024))
            last_error_line = (err.read().decode(errors="replace").strip().splitlines() or [""])[-1]
    finally:
        os.close(report_read)
        _remove_tree(workdir)
    cpu = usage.ru_utime + usage.ru_stime
    if "layers" not in report and not timed_out:
        problem = report.get("error") or last_error_line or "the bootstrap said nothing"
        return SandboxResult(None, stdout, stderr, wall, cpu, reason=f"setup failed: {problem}")
    killed, reason = _reason(limits, status, timed_out, cpu, max(stdout_size, stderr_size), last_error_line)
    cleanup = " and every process of the run's uid" if uid is not None else ""
    layers = {**report.get("layers", {}),
              "environment": "scrubbed: PATH, HOME, TMPDIR, LANG and thread counts only",
              "wall clock": f"{limits.wall_time_s:g} s, then the process group is killed{cleanup}"}
    _warn_unavailable(layers)
    if report.get("refused"):
        missing = tuple(report["refused"])
        return SandboxResult(None, "", "", wall, reason=f"the {' and '.join(missing)} "
                             f"layer{'s are' if len(missing) > 1 else ' is'} unavailable", layers=layers,
                             refused=missing)
    return SandboxResult(proc.returncode, stdout, stderr, wall, cpu, killed, reason, layers)


@functools.cache
def sandbox_layers() -> dict[str, str]:
    """The containment layers a run gets on this machine (probed once, by running an empty program)."""
    return run_sandboxed("").layers


# --------------------------------------------------------------------------------------------------
# The parent's side

_FRESH_IDS = range(1 << 20, 1 << 30)  # far above the ids of real accounts, below the special (id_t)-1
_SETUP_FAILED = 70  # the child's exit code when a layer that must work did not (EX_SOFTWARE)
_warned: set[tuple[str, str]] = set()


def _fresh_id() -> int | None:
    """A random uid (also used as gid) for one run, so that all processes of that uid are the run's own;
    None when the user namespace does not map the range (no privilege drop then)."""
    for path in ("/proc/self/uid_map", "/proc/self/gid_map"):
        with open(path) as f:
            ranges = [range(int(a), int(a) + int(n)) for a, _, n in (line.split() for line in f)]
        if not any(r.start <= _FRESH_IDS.start and _FRESH_IDS.stop <= r.stop for r in ranges):
            return None
    return _FRESH_IDS.start + secrets.randbelow(len(_FRESH_IDS))  # not `random`: seeded alike in every worker


def _workdir_parent() -> str:
    """Where work dirs go: the temp dir if a stranger uid can enter it, else /tmp."""
    base = tempfile.gettempdir()
    return base if _first_closed_dir(base) is None else "/tmp"


def _child_env(workdir: str) -> dict[str, str]:
    # numeric libraries start a thread per core otherwise, and threads count against the process limit
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            **threads}


def _wait(pid: int, timeout: float) -> tuple[int, Any, bool]:
    """Reap the child: (wait status, rusage, timed out), killing its process group after `timeout` s."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()  # not select(): a large parent process may hold fds above FD_SETSIZE
        poller.register(pidfd, select.POLLIN)
        timed_out = not poller.poll(max(timeout, 0) * 1000)
    finally:
        os.close(pidfd)
    if timed_out:
        os.killpg(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    return status, usage, timed_out


def _kill_leftovers(pgid: int, uid: int | None) -> None:
    """Kill what the program left running: its process group, and (as root) every process of its uid,
    which also finds those that left the group (setsid)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if uid is None:
        return
    for _ in range(1000):  # a process forking while we kill: each pass kills at least what it found
        alive = [pid for pid, state in _processes_of(uid) if state != "Z"]
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not alive:
            return
        time.sleep(0.001)


def _processes_of(uid: int) -> list[tuple[int, str]]:
    """(pid, state letter) of the processes whose real, effective or saved uid is `uid`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            # not stat(): /proc/<pid> of a process that changed uid belongs to root
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if str(uid) in fields.get("Uid", "").split()[:3]:
            found.append((int(name), fields.get("State", "?").split()[0]))
    return found


def _read_report(fd: int) -> dict[str, Any]:
    """What the child's bootstrap reported: {"layers": {...}} or {"error": ...}; {} if it said nothing."""
    # Without blocking: the child is gone, but a process the parent forked meanwhile (a data loader
    # worker, say) may hold the pipe's write end, so no end of file may come.
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    try:
        return json.loads(b"".join(chunks) or b"{}")
    except json.JSONDecodeError:
        return {}


def _read_capped(file: Any, cap: int) -> tuple[str, int]:
    """The file's text, at most `cap` bytes of it (head and tail), and its full size."""
    size = os.fstat(file.fileno()).st_size
    file.seek(0)
    if size <= cap:
        return file.read().decode(errors="replace"), size
    head = file.read(cap // 2)
    file.seek(size - cap // 2)
    tail = file.read()
    return (head.decode(errors="replace") + f"\n[truncated: {size - len(head) - len(tail)} bytes omitted]\n"
            + tail.decode(errors="replace")), size


def _reason(limits: SandboxLimits, status: int, timed_out: bool, cpu_s: float, output_size: int,
            last_error_line: str) -> tuple[bool, str | None]:
    """(killed by a signal, the limit or block that ended the program or None)."""
    if timed_out:
        return True, f"wall time limit {limits.wall_time_s:g} s"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= limits.cpu_time_s):
            return True, f"CPU time limit {limits.cpu_time_s} s"
        return True, f"killed by {signal.Signals(sig).name}"
    if output_size >= limits.file_size_bytes:
        return False, f"output limit {_size(limits.file_size_bytes)}"
    if match := re.match(r"PermissionError: sandbox (blocked .+)", last_error_line):
        return False, match[1]
    if re.match(r"[\w.]*MemoryError\b", last_error_line):
        return False, f"memory limit {_size(limits.memory_bytes)}"
    if "[Errno 27]" in last_error_line:  # EFBIG
        return False, f"file size limit {_size(limits.file_size_bytes)}"
    if "[Errno 28]" in last_error_line:  # ENOSPC: the work dir's tmpfs is full
        return False, f"disk limit {_size(limits.disk_bytes)}"
    return False, None


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n % MiB == 0 else f"{n // KiB} KiB"


def _remove_tree(path: str) -> None:
    """Remove the work dir even where the program took permissions away from its own files."""
    def make_writable_and_retry(func: Callable, failed: str, _: Any) -> None:
        os.chmod(os.path.dirname(failed), 0o700)
        func(failed)

    try:
        shutil.rmtree(path, onerror=make_writable_and_retry)
    except OSError as e:
        log.warning("could not remove sandbox work dir %s: %s", path, e)


def _warn_unavailable(layers: dict[str, str]) -> None:
    for name, state in layers.items():
        if "unavailable" in state and (name, state) not in _warned:
            _warned.add((name, state))
            log.warning("python sandbox: %s layer %s", name, state)


def _first_closed_dir(path: str) -> str | None:
    """The first directory on `path` (itself included) that users other than its owner and group may
    not enter, or None."""
    current = "/"
    for part in os.path.abspath(path).strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & 0o001:
            return current
    return None


# --------------------------------------------------------------------------------------------------
# The child's bootstrap: contain this process, then run the program

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_NOATIME, MS_NODIRATIME = 1, 2, 4, 8, 32, 1024, 2048
MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 4096, 16384, 1 << 18, 1 << 21
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
_MOUNT_OPTIONS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                  "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}


def _child_main(config: dict[str, Any]) -> None:
    # Imported before the audit hook, which then refuses their use: numpy and sympy import ctypes and
    # subprocess at import time and must still import. _posixsubprocess.fork_exec raises no audit event.
    import _posixsubprocess

    limits = SandboxLimits(**config["limits"])
    workdir, uid = config["workdir"], config["uid"]
    program = sys.stdin.buffer.read()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.umask(0o022)  # directories made in _expose must be enterable by the stranger uid
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        layers = _contain(libc, workdir, uid, limits)
    except OSError as e:
        _report(config["report_fd"], {"error": str(e)})
        os._exit(_SETUP_FAILED)
    missing = [name for name in config.get("require", []) if layers.get(name, "unavailable").startswith("unavailable")]
    if missing:  # fail closed: the program is neither written nor run
        _report(config["report_fd"], {"layers": layers, "refused": missing})
        os._exit(_SETUP_FAILED)
    with open("main.py", "wb") as f:  # so that tracebacks show the program's lines
        f.write(program)
    if config["audit_hook"]:
        _posixsubprocess.fork_exec = _refuse_fork_exec
        sys.addaudithook(_audit_hook(os.path.realpath(workdir), os.getpid()))
        layers["audit hook"] = "blocks network, processes, ctypes, writes outside the work dir, other /proc"
    else:
        layers["audit hook"] = "off for this run (audit_hook=False)"
    _report(config["report_fd"], {"layers": layers})
    _run_program(program, workdir)


def _contain(libc: ctypes.CDLL, workdir: str, uid: int | None, limits: SandboxLimits) -> dict[str, str]:
    """Apply layers 1-4 of the module docstring; returns what each did. A layer the kernel does not offer
    is reported unavailable; raises OSError only when a step that must not fail does (the uid drop)."""
    layers = {}
    try:
        _enter_namespaces(libc)
    except OSError as e:
        namespaced = False
        layers["network"] = f"unavailable: no network namespace ({e}); only the audit hook blocks sockets"
        layers["filesystem"] = "unavailable: no mount namespace; only the audit hook blocks writes outside"
    else:
        namespaced = True
        layers["network"] = "own network namespace: no interfaces"
        layers["filesystem"] = _seal_filesystem(libc, workdir, uid, limits)
    os.chdir(workdir)  # onto the tmpfs just mounted there
    interpreter_reachable = not any(_first_closed_dir(p) for p in sys.path if os.path.isdir(p))
    root = os.geteuid() == 0
    nproc, processes = None, f", {limits.max_processes} processes"
    if uid is not None and interpreter_reachable:
        nproc = limits.max_processes  # counted for the fresh uid alone
    elif not root and namespaced and _kernel_at_least(5, 14):
        nproc = limits.max_processes  # counted in the run's own user namespace alone
        processes += " (counted in its own user namespace)"
    elif not root:
        running = _tasks_of_uid(os.getuid())  # RLIMIT_NPROC counts all of the user's processes (and threads)
        nproc = running + limits.max_processes
        processes = f", {limits.max_processes} processes more than the user's {running}"
    _lower_rlimits(limits, nproc)
    layers["rlimits"] = (f"CPU {limits.cpu_time_s} s, memory {_size(limits.memory_bytes)}, file size "
                         f"{_size(limits.file_size_bytes)}, {limits.max_open_files} open files, no core dumps"
                         + (processes if nproc is not None else ", no process limit (root ignores RLIMIT_NPROC)"))
    if uid is None:
        if not root:
            layers["user"] = ("unavailable: not root; runs as the calling user (processes that leave the "
                              "process group outlive the run until their CPU limit)")
        else:
            layers["user"] = (f"unavailable: the user namespace maps no uids in [{_FRESH_IDS.start}, "
                              f"{_FRESH_IDS.stop}); runs as root, no process limit")
    elif not interpreter_reachable:
        layers["user"] = ("unavailable: the interpreter's directories are closed to other users and there is "
                          "no mount namespace to expose them; runs as root, no process limit")
    else:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        # setuid left the process undumpable, which makes its own /proc/self root-owned and unreadable
        _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
        layers["user"] = f"fresh uid and gid {uid}, no groups, no_new_privs"
    if namespaced and os.geteuid() != 0:
        _drop_capabilities(libc)  # those the new user namespace gave
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    return layers


def _enter_namespaces(libc: ctypes.CDLL) -> None:
    """New network and mount namespaces (in a new user namespace, mapping only ourselves, when not root);
    mounts made from here on stay private to this process and its children."""
    root = os.geteuid() == 0
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(CLONE_NEWNET | CLONE_NEWNS | (0 if root else CLONE_NEWUSER)), "unshare")
    if not root:
        mappings = (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1"))
        for name, text in mappings:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)


def _seal_filesystem(libc: ctypes.CDLL, workdir: str, uid: int | None, limits: SandboxLimits) -> str:
    """Expose the interpreter to a stranger uid, remount everything read-only, mount a tmpfs work dir."""
    try:
        if uid is not None:
            _expose(libc, [p for p in sys.path if os.path.isdir(p)])
        failed = _remount_read_only(libc)
        owner = uid if uid is not None else os.getuid()
        _mount(libc, "tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={limits.disk_bytes},nr_inodes=4096,mode=0700,uid={owner},gid={owner}")
    except OSError as e:
        return f"unavailable: {e}; only the audit hook blocks writes outside the work dir"
    if failed:
        return f"unavailable: could not remount read-only: {', '.join(failed)}"
    return f"all mounts read-only; work dir: private {_size(limits.disk_bytes)} tmpfs"


def _expose(libc: ctypes.CDLL, paths: list[str]) -> None:
    """Make `paths` reachable for a stranger uid: each directory on the way that others may not enter
    (e.g. /root, 0700, holding a pyenv Python) is covered by an empty tmpfs into which only the paths
    below it are bound back."""
    covers: dict[str, list[str]] = {}
    for path in sorted(set(paths)):
        blocker = _first_closed_dir(path)
        if blocker and not any(path.startswith(bound + "/") for bound in covers.get(blocker, [])):
            covers.setdefault(blocker, []).append(path)
    for blocker, inside in covers.items():
        held = [(path, os.open(path, os.O_PATH)) for path in inside]  # grabbed before the tmpfs hides them
        _mount(libc, "tmpfs", blocker, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        for path, fd in held:
            os.makedirs(path, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            os.close(fd)


def _remount_read_only(libc: ctypes.CDLL) -> list[str]:
    """Remount every mount of this (private) namespace read-only; returns those that failed."""
    failed = []
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])  # mountinfo escapes spaces
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY  # keeping the mount's own flags (in a user namespace
        for option in fields[5].split(","):     # they may be locked and must be restated)
            flags |= _MOUNT_OPTIONS.get(option, 0)
        try:
            _mount(libc, None, target, None, flags)
        except OSError as e:
            failed.append(f"{target} ({e.strerror})")
    return failed


def _kernel_at_least(major: int, minor: int) -> bool:
    found = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return bool(found) and (int(found[1]), int(found[2])) >= (major, minor)


def _tasks_of_uid(uid: int) -> int:
    """How many tasks (processes and their threads) whose real uid is `uid` run now: what RLIMIT_NPROC counts."""
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
                if fields["Uid"].split()[0] == str(uid):
                    count += int(fields["Threads"])
            except (OSError, KeyError, ValueError):
                continue
    return count


def _lower_rlimits(limits: SandboxLimits, nproc: int | None) -> None:
    wanted = {resource.RLIMIT_CPU: (limits.cpu_time_s, limits.cpu_time_s + 1),
              resource.RLIMIT_AS: (limits.memory_bytes,) * 2,
              resource.RLIMIT_FSIZE: (limits.file_size_bytes,) * 2,
              resource.RLIMIT_NOFILE: (limits.max_open_files,) * 2,
              resource.RLIMIT_CORE: (0, 0)}
    if nproc is not None:
        wanted[resource.RLIMIT_NPROC] = (nproc,) * 2
    for kind, (soft, hard) in wanted.items():
        _, current_hard = resource.getrlimit(kind)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(kind, (soft, hard))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


def _drop_capabilities(libc: ctypes.CDLL) -> None:
    """Clear all capabilities (otherwise the program could remount the file system writable)."""
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    _check(libc.capset(ctypes.byref(header), data), "capset")


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def c(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    _check(libc.mount(c(source), c(target), c(fstype), ctypes.c_ulong(flags), c(data)), f"mount {target}")


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _report(fd: int, message: dict[str, Any]) -> None:
    os.write(fd, json.dumps(message).encode())
    os.close(fd)  # before the program runs: it cannot write a report of its own


def _refuse_fork_exec(*_: Any) -> None:
    raise PermissionError("sandbox blocked starting processes: _posixsubprocess.fork_exec")


# the writes an event makes: argument positions of the paths it creates or changes
_PATH_EVENTS = {"os.mkdir": (0,), "os.rename": (0, 1), "os.remove": (0,), "os.rmdir": (0,),
                "os.symlink": (1,), "os.link": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,),
                "os.utime": (0,), "os.setxattr": (0,), "os.removexattr": (0,)}
_NETWORK_EVENTS = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                   "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"}
_PROCESS_EVENTS = {"os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "os.system",
                   "subprocess.Popen", "os.startfile"}
_INTROSPECTION_EVENTS = {"gc.get_objects", "gc.get_referrers", "gc.get_referents"}  # would reach the hook
_UNSAFE_MODULES = {"_posixsubprocess", "_ctypes", "ctypes"}  # a fresh import would undo the patches
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_PROC_ENTRY = re.compile(r"/proc/(\d+)(/|$)")


def _audit_hook(workdir: str, pid: int) -> Callable[[str, tuple], None]:
    """The hook of layer 5: raises PermissionError("sandbox blocked ...") on the events it refuses."""
    inside = workdir + os.sep

    def refuse(what: str, event: str) -> None:
        raise PermissionError(f"sandbox blocked {what}: {event}")

    def check_path(path: Any, writes: bool, event: str) -> None:
        if isinstance(path, int):  # an open fd: checked when it was opened
            return
        real = os.path.realpath(os.fsdecode(path))
        other = _PROC_ENTRY.match(real)
        if other and int(other[1]) != pid:
            refuse("access to other processes", f"{event} {real}")
        if writes and not (real == workdir or real.startswith(inside) or real == os.devnull):
            refuse("writing outside the work dir", f"{event} {real}")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
            check_path(path, writes, event)
        elif event in _PATH_EVENTS:
            for position in _PATH_EVENTS[event]:
                check_path(args[position], True, event)
        elif event in _NETWORK_EVENTS:
            refuse("network access", event)
        elif event in _PROCESS_EVENTS:
            refuse("starting processes", event)
        elif event.startswith("ctypes."):
            refuse("ctypes", event)
        elif event == "import" and args[0] in _UNSAFE_MODULES:
            refuse("importing " + args[0], event)
        elif event in ("os.kill", "os.killpg") and args[0] not in (0, pid):  # pid is also the process group
            refuse("signalling other processes", event)
        elif event in _INTROSPECTION_EVENTS:
            refuse("inspecting the interpreter's objects", event)

    return hook


def _run_program(program: bytes, workdir: str) -> None:
    """Run the program as __main__ the way `python main.py` would, with tracebacks that start at it."""
    main = types.ModuleType("__main__")
    main.__file__ = "main.py"
    sys.modules["__main__"] = main
    sys.argv = ["main.py"]
    sys.path.insert(0, workdir)
    try:
        exec(compile(program, "main.py", "exec"), main.__dict__)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - reported as Python would
        _print_traceback(e)
        sys.exit(1)


def _print_traceback(error: BaseException) -> None:
    """Print the traceback as Python would, without the frames of this file (bootstrap, audit hook)."""
    report = traceback.TracebackException(type(error), error, error.__traceback__)
    pending = [report]
    while pending:
        part = pending.pop()
        part.stack = traceback.StackSummary.from_list([f for f in part.stack if f.filename != __file__])
        pending += [chained for chained in (part.__cause__, part.__context__) if chained is not None]
    sys.stderr.write("".join(report.format()))


if __name__ == "__main__":
    _child_main(json.loads(sys.argv[1]))
