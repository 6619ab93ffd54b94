"""The sandbox fails closed, reports its layers, and bounds a fork bomb as root and as a non-root user."""

import asyncio
import json
import logging
import os
import subprocess
import sys

import pytest
from rlvr.envs.checker import check_env
from rlvr.envs.python import PythonEnv, PythonSandbox, describe_sandbox, python_tasks
from rlvr.envs.sandbox import REQUIRED_LAYERS, SandboxLimits, _first_closed_dir, run_sandboxed, sandbox_layers

from rlvr.core.contract import ToolCall
from rlvr.core.tasks import env_tasks

QUICK = SandboxLimits(wall_time_s=4.0, cpu_time_s=1)
FORK_BOMB = "import os\nwhile True: os.fork()"
SANDBOX_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "envs", "sandbox.py")


@pytest.fixture
def missing_layer(monkeypatch):
    """Make the tool require a layer no machine has, so that the real refusal path runs here too."""
    monkeypatch.setattr(PythonSandbox, "required_layers", (*REQUIRED_LAYERS, "imaginary"))


def test_a_required_layer_that_is_unavailable_refuses_the_program(tmp_path):
    marker = tmp_path / "ran"
    result = run_sandboxed(f"open({str(marker)!r}, 'w')", QUICK, require=("network", "imaginary"),
                           audit_hook=False)
    assert result.refused == ("imaginary",) and result.exit_code is None and not marker.exists()
    assert result.status == "refused: the imaginary layer is unavailable" and result.stdout == ""
    assert run_sandboxed("print(1)", QUICK, require=REQUIRED_LAYERS).refused == () or \
        any(sandbox_layers()[name].startswith("unavailable") for name in REQUIRED_LAYERS)


def test_the_tool_answers_a_refusal_logged_once(missing_layer, caplog):
    env = PythonEnv(python_tasks(1)[0], tool_timeout_s=5.0)
    env.reset()
    calls = [ToolCall(name="run_python", arguments={"code": "print(6 * 7)"}) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="rlvr.envs.python"):
        asyncio.run(env.step(calls))
    for call in calls:  # an observation, not an error or exception
        assert call.error is None and call.result.startswith("[refused: the python sandbox did not run")
        assert "imaginary" in call.result and "env.options: {weak_sandbox: true}" in call.result
        assert "42" not in call.result
    assert len([r for r in caplog.records if "did not run the program" in r.getMessage()]) <= 1


def test_weak_sandbox_option_reaches_the_tool(missing_layer):
    tasks = env_tasks(PythonEnv, 2, seed=0, split="train", options={"weak_sandbox": True})
    assert all(t.metadata["weak_sandbox"] is True for t in tasks)
    assert "weak_sandbox" not in PythonEnv.tasks(1)[0].metadata
    env = PythonEnv(tasks[0], tool_timeout_s=5.0)
    env.reset()
    call = ToolCall(name="run_python", arguments={"code": "print(6 * 7)"})
    asyncio.run(env.step([call]))
    assert call.result == "42\n[exit 0]"
    assert PythonSandbox(weak_sandbox=True).run_python("print(1)") == "1\n[exit 0]"
    assert PythonSandbox().run_python("print(1)").startswith("[refused:")


def test_envs_check_reports_the_layers():
    lines = describe_sandbox()
    assert {line.split(":")[0] for line in lines} >= {f"sandbox {name}" for name in sandbox_layers()}
    report = asyncio.run(check_env(PythonEnv, tool_timeout_s=5.0))
    info = [line for line in report.lines() if line.startswith("info  sandbox")]
    assert len(info) == len(sandbox_layers()) + 1 and any(" network: " in line for line in info)
    assert all((" active - " in line) != (" UNAVAILABLE - " in line) for line in info[:-1])


def test_fork_bomb_as_root_or_current_user_is_bounded():
    layers = sandbox_layers()
    if os.geteuid() == 0 and "fresh uid" not in layers["user"]:
        pytest.skip(f"root without a fresh uid: {layers['user']}")
    result = run_sandboxed(FORK_BOMB, QUICK, audit_hook=False)
    assert result.exit_code == 1 and "BlockingIOError" in result.stderr, result.stderr
    assert "processes" in result.layers["rlimits"]


# -- as a non-root user ------------------------------------------------------------------------------------

_CHILD = """
import importlib.util, json, sys
from dataclasses import asdict
spec = importlib.util.spec_from_file_location("sandbox_as_user", sys.argv[1])
sandbox = sys.modules["sandbox_as_user"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sandbox)
limits = sandbox.SandboxLimits(wall_time_s=4.0, cpu_time_s=1)
runs = {"bomb": sandbox.run_sandboxed(sys.argv[2], limits, audit_hook=False),
        "hooked": sandbox.run_sandboxed(sys.argv[2], limits),
        "strict": sandbox.run_sandboxed("import os; print(os.getuid())", limits, require=sandbox.REQUIRED_LAYERS)}
print(json.dumps({k: {**asdict(r), "status": r.status} for k, r in runs.items()}))
"""


def _interpreter_for_a_stranger():
    """A Python >= 3.9 that a uid other than root can run (the venv's may live under a closed /root)."""
    candidates = [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]
    for path in candidates:
        real = os.path.realpath(path)
        if os.path.exists(real) and _first_closed_dir(os.path.dirname(real)) is None and os.stat(real).st_mode & 0o001:
            version = subprocess.run([real, "-c", "import sys; print(sys.version_info >= (3, 9))"],
                                     capture_output=True, text=True, check=False)
            if version.stdout.strip() == "True":
                return real
    return None


def _run_as_user(uid):
    interpreter = _interpreter_for_a_stranger() if os.geteuid() == 0 else sys.executable
    if interpreter is None:
        pytest.skip("no Python >= 3.9 that a non-root uid may execute (the venv's lives under a closed dir)")

    def drop():
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)

    done = subprocess.run([interpreter, "-I", "-c", _CHILD, SANDBOX_PY, FORK_BOMB], capture_output=True,
                          text=True, timeout=90, check=False, cwd="/", env={"PATH": "/usr/bin:/bin"},
                          preexec_fn=drop if os.geteuid() == 0 else None)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_fork_bomb_as_a_non_root_user_is_bounded():
    if not os.access(SANDBOX_PY, os.R_OK) or _first_closed_dir(os.path.dirname(SANDBOX_PY)):
        pytest.skip(f"{SANDBOX_PY} is not reachable for other users")
    uid = os.geteuid() or 60_999  # as root: a uid of no account, so its process count is the run's own
    runs = _run_as_user(uid)
    bomb, hooked, strict = runs["bomb"], runs["hooked"], runs["strict"]
    assert "not root" in bomb["layers"]["user"] and "processes" in bomb["layers"]["rlimits"], bomb["layers"]
    assert bomb["exit_code"] == 1 and "BlockingIOError" in bomb["stderr"], bomb["status"] + bomb["stderr"]
    assert not bomb["killed"] and bomb["wall_time_s"] < 4.0
    assert hooked["reason"] == "blocked starting processes: os.fork"
    missing = [name for name in REQUIRED_LAYERS if strict["layers"][name].startswith("unavailable")]
    if missing:  # no user namespaces for this user: fail closed
        assert strict["refused"] == missing and strict["status"].startswith("refused:")
    else:
        assert strict["status"] == "exit 0" and strict["stdout"] == f"{uid}\n"
        assert "own network namespace" in strict["layers"]["network"]
        assert "read-only" in strict["layers"]["filesystem"]
