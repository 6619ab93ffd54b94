import asyncio
import os
import shutil
import socket
import stat
import tempfile
import time

import pytest

from rlvr.core.contract import ToolCall
from rlvr.envs.python import COINS, FAMILIES, PythonEnv, PythonSandbox, limits_within, python_tasks
from rlvr.envs.sandbox import SandboxLimits, run_sandboxed, sandbox_layers

QUICK = SandboxLimits(wall_time_s=4.0, cpu_time_s=1)


def _run(code, limits=QUICK, **kwargs):
    return run_sandboxed(code, limits, **kwargs)


def _kernel_layer(name, needs):
    """Skip unless this machine gives the layer (a kernel layer tested alone, without the audit hook)."""
    if needs not in sandbox_layers()[name]:
        pytest.skip(f"{name} layer: {sandbox_layers()[name]}")


# -- normal programs -----------------------------------------------------------------------------------


def test_output_exit_codes_and_tracebacks():
    ok = _run("import sys\nprint('hello')\nprint('to stderr', file=sys.stderr)")
    assert (ok.exit_code, ok.stdout, ok.stderr, ok.status) == (0, "hello\n", "to stderr\n", "exit 0")
    assert not ok.killed and ok.reason is None and ok.wall_time_s > 0

    failed = _run("x = 1\n\ndef f():\n    return 1 / 0\n\nf()")
    assert failed.exit_code == 1 and failed.status == "exit 1"
    assert 'File "main.py", line 6, in <module>' in failed.stderr and "return 1 / 0" in failed.stderr
    assert failed.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "sandbox.py" not in failed.stderr  # the bootstrap's own frames are left out

    assert _run("import sys; sys.exit(3)").exit_code == 3
    syntax = _run("def f(:\n    pass")
    assert syntax.exit_code == 1 and "SyntaxError" in syntax.stderr and "main.py" in syntax.stderr


def test_programs_can_use_their_work_dir_and_libraries():
    result = _run("import os, tempfile, numpy\n"
                  "open('data.txt', 'w').write('42')\n"
                  "with tempfile.NamedTemporaryFile('w', delete=False) as f: f.write('7')\n"
                  "print(int(open('data.txt').read()) + int(open(f.name).read()), numpy.arange(4).sum())")
    assert result.stdout == "49 6\n", result.stderr


def test_long_output_is_truncated_and_a_flood_hits_the_output_limit():
    long = _run("for i in range(100_000): print(f'line {i}')")
    assert long.exit_code == 0 and long.reason is None
    assert long.stdout.startswith("line 0\n") and long.stdout.endswith("line 99999\n")
    assert "[truncated:" in long.stdout and len(long.stdout) < QUICK.output_bytes + 100

    flood = _run("while True: print('x' * 1000)", SandboxLimits(file_size_bytes=1 << 20))
    assert flood.reason == "output limit 1 MiB" and flood.exit_code != 0 and flood.wall_time_s < 3


# -- the env ----------------------------------------------------------------------------------------------


def test_env_runs_code_through_step():
    task = python_tasks(1)[0]
    env = PythonEnv(task)
    messages, tools = env.reset()
    assert "run_python" in messages[0]["content"] and messages[-1]["content"] == task.prompt
    assert tools[0]["function"]["name"] == "run_python"
    assert tools[0]["function"]["parameters"]["required"] == ["code"]
    calls = [ToolCall(name="run_python", arguments={"code": "print(6 * 7)"}),
             ToolCall(name="run_python", arguments={"code": "import missing_module"}),
             ToolCall(name="run_python", arguments={"code": "x = 1"})]
    result = asyncio.run(env.step(calls))
    assert result.results[0] == "42\n[exit 0]"
    assert "ModuleNotFoundError: No module named 'missing_module'" in result.results[1]
    assert result.results[1].endswith("[exit 1]") and result.results[2] == "(no output)\n[exit 0]"
    assert all(c.error is None for c in calls)


def test_the_sandbox_times_out_before_the_env_does():
    env = PythonEnv(python_tasks(1)[0], tool_timeout_s=2.0)
    code = "import time\nprint('start', flush=True)\ntime.sleep(30)"
    call = ToolCall(name="run_python", arguments={"code": code})
    asyncio.run(env.step([call]))
    assert call.error is None and call.result == "start\n[killed: wall time limit 1 s]"
    for timeout in (0.5, 2.0, 10.0, 60.0):
        limits = limits_within(timeout)
        assert limits.wall_time_s < timeout and limits.cpu_time_s >= 1
    assert limits_within(60.0) == SandboxLimits()
    assert PythonSandbox().limits == SandboxLimits()


# -- tasks ------------------------------------------------------------------------------------------------


def test_tasks_are_deterministic_and_named():
    tasks = python_tasks(60, seed=3)
    assert tasks == python_tasks(60, seed=3) == PythonEnv.tasks(60, seed=3)
    assert tasks != python_tasks(60, seed=4) and tasks != python_tasks(60, seed=3, split="test")
    assert {t.metadata["family"] for t in tasks} == set(FAMILIES)
    assert all(isinstance(t.answer, int) and t.env == "python" for t in tasks)
    assert [t.id for t in tasks[:2]] == ["python-train-3-0", "python-train-3-1"]
    for task in tasks:
        assert all(str(value) in task.prompt for value in task.metadata["params"].values())


def _coin_ways(amount):
    """Ways to pay `amount` with COINS, counting how many of each coin from the largest down."""
    ways = [1] * (amount + 1)  # with the 1-cent coin alone
    for coin in COINS[1:]:
        ways = [sum(ways[r - k * coin] for k in range(r // coin + 1)) for r in range(amount + 1)]
    return ways[amount]


def _recompute(family, p):
    sympy = pytest.importorskip("sympy")
    np = pytest.importorskip("numpy")
    if family == "prime_count":
        return int(sympy.primepi(p["n"] - 1))
    if family == "power_digit_sum":
        value, total = p["base"] ** p["exponent"], 0
        while value:
            value, digit = divmod(value, 10)
            total += digit
        return total
    if family == "fibonacci_mod":
        return int(sympy.fibonacci(p["n"]) % p["m"])
    if family == "divisible_count":
        numbers = np.arange(p["a"], p["b"] + 1)
        return int(((numbers % p["x"] == 0) | (numbers % p["y"] == 0)).sum())
    if family == "collatz_steps":
        n, steps = p["n"], 0
        while n > 1:
            n, steps = (n >> 1, steps + 1) if n & 1 == 0 else ((3 * n + 1) >> 1, steps + 2)
        return steps
    if family == "coin_change":
        return _coin_ways(p["amount"])
    raise AssertionError(family)


def test_every_family_answer_is_right():
    first_of_family = {}
    for task in python_tasks(60, seed=11):
        first_of_family.setdefault(task.metadata["family"], task)
    assert set(first_of_family) == set(FAMILIES)
    for family, task in first_of_family.items():
        assert task.answer == _recompute(family, task.metadata["params"]), task.prompt


# -- adversarial programs: each is contained, reported, and the test process survives ------------------


def test_infinite_loop_is_killed():
    result = _run("while True: pass", SandboxLimits(wall_time_s=4.0, cpu_time_s=1))
    assert result.killed and result.exit_code < 0
    # the CPU limit, unless a loaded machine gives the loop less than a quarter of a core
    assert result.reason in ("CPU time limit 1 s", "wall time limit 4 s")
    assert result.status == f"killed: {result.reason}"


def test_fork_bomb_is_blocked():
    result = _run("import os\nwhile True: os.fork()")
    assert result.reason == "blocked starting processes: os.fork" and result.exit_code == 1
    for code in ("import subprocess; subprocess.run(['id'])", "import os; os.system('id')",
                 "import _posixsubprocess; _posixsubprocess.fork_exec()"):
        assert _run(code).reason.startswith("blocked starting processes"), code


def test_fork_bomb_without_the_audit_hook_meets_the_process_limit():
    _kernel_layer("rlimits", "processes")
    start = time.perf_counter()
    result = _run("import os\nwhile True: os.fork()", audit_hook=False)
    assert result.exit_code == 1 and "BlockingIOError" in result.stderr
    assert not result.killed and time.perf_counter() - start < QUICK.wall_time_s


def test_huge_allocation_hits_the_memory_limit():
    result = _run("block = bytearray(10 * 2**30)")
    assert result.reason == "memory limit 512 MiB" and result.status == "exit 1 (memory limit 512 MiB)"
    assert result.stderr.rstrip().endswith("MemoryError")


@pytest.mark.parametrize("audit_hook", [True, False])
def test_no_network(audit_hook):
    if not audit_hook:
        _kernel_layer("network", "own network namespace")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        code = f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\nprint('connected')"
        result = _run(code, audit_hook=audit_hook)
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.exit_code == 1 and "connected" not in result.stdout
    if audit_hook:
        assert result.reason == "blocked network access: socket.connect"
    else:
        assert "Network is unreachable" in result.stderr


@pytest.fixture
def open_dir():
    """A directory anyone may write to (so only the sandbox stands between the program and it)."""
    path = tempfile.mkdtemp(prefix="rlvr-test-open-")
    os.chmod(path, 0o777 | stat.S_ISVTX)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("audit_hook", [True, False])
def test_no_writes_outside_the_work_dir(open_dir, audit_hook):
    if not audit_hook:
        _kernel_layer("filesystem", "read-only")
    target = os.path.join(open_dir, "escaped.txt")
    result = _run(f"open({target!r}, 'w').write('out')", audit_hook=audit_hook)
    assert result.exit_code == 1 and not os.path.exists(target)
    if audit_hook:
        assert result.reason == f"blocked writing outside the work dir: open {os.path.realpath(target)}"
    else:
        assert "Read-only file system" in result.stderr
    # a relative path from a directory fd dodges the hook's path check; the read-only mounts stop it
    if not audit_hook:
        sneaky = _run(f"import os\nfd = os.open({open_dir!r}, os.O_RDONLY)\n"
                      "os.open('escaped.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd)", audit_hook=False)
        assert sneaky.exit_code == 1 and not os.path.exists(target)


@pytest.mark.parametrize("audit_hook", [True, False])
def test_parent_environment_is_not_visible(monkeypatch, audit_hook):
    if not audit_hook:
        _kernel_layer("user", "fresh uid")
    secret = "rlvr-test-secret-8d41f"
    monkeypatch.setenv("RLVR_TEST_SECRET", secret)
    result = _run("import os\nprint(' '.join(sorted(os.environ)), os.environ['HOME'] == os.getcwd())\n"
                  "try:\n    print(open(f'/proc/{os.getppid()}/environ').read())\n"
                  "except OSError as e:\n    print('refused:', e)", audit_hook=audit_hook)
    assert result.exit_code == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    names, refused = result.stdout.splitlines()
    assert names == "HOME LANG MKL_NUM_THREADS OMP_NUM_THREADS OPENBLAS_NUM_THREADS PATH TMPDIR True"
    assert refused.startswith("refused:")


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie no longer runs
    except FileNotFoundError:
        return False


def test_no_process_is_left_running():
    _kernel_layer("user", "fresh uid")  # needs fork (so no hook) and the kill by uid (setsid escapes the group)
    # a child that sleeps in the process group, and a grandchild that left it (setsid)
    code = ("import os, time\n"
            "child = os.fork()\n"
            "if child == 0:\n    time.sleep(60)\n"
            "runaway = os.fork()\n"
            "if runaway == 0:\n    os.setsid()\n    time.sleep(60)\n"
            "print(child, runaway, flush=True)\n")
    killed = _run(code + "time.sleep(60)", SandboxLimits(wall_time_s=1.0), audit_hook=False)
    finished = _run(code, audit_hook=False)
    assert killed.reason == "wall time limit 1 s" and finished.exit_code == 0
    pids = [int(pid) for result in (killed, finished) for pid in result.stdout.split()]
    assert len(pids) == 4
    deadline = time.monotonic() + 2
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_running, pids))


@pytest.mark.parametrize("code, reason", [
    ("import ctypes; ctypes.CDLL(None)", "blocked ctypes: ctypes.dlopen"),
    ("import os; os.kill(1, 0)", "blocked signalling other processes: os.kill"),
    ("import gc; gc.get_objects()", "blocked inspecting the interpreter's objects: gc.get_objects"),
])
def test_other_blocked_operations(code, reason):
    assert _run(code).reason == reason


def test_layers_are_reported():
    layers = sandbox_layers()
    assert set(layers) == {"network", "filesystem", "rlimits", "user", "audit hook", "environment",
                           "wall clock"}
    assert "blocks network" in layers["audit hook"] and "CPU" in layers["rlimits"]
    assert _run("pass", audit_hook=False).layers["audit hook"] == "off for this run (audit_hook=False)"
