"""Envs by name, module path and entry point; the env checker on a good env and on broken ones; the CLI."""

import asyncio

import pytest
from typer.testing import CliRunner

from rlvr.cli import app
from rlvr.envs.calculator import CalculatorEnv
from rlvr.envs.checker import check_env
from rlvr.envs.registry import env_specs, load_env
from rlvr.core.plugins import PluginError

BROKEN_ENVS = '''
import random
from rlvr.core.contract import Task
from rlvr.envs.base import ToolEnv, tool


class Counter(ToolEnv):
    """Counts up."""
    name = "counter"

    def __init__(self, task, seed=0, tool_timeout_s=10.0):
        super().__init__(task, seed, tool_timeout_s)
        self.count = 0

    @classmethod
    def tasks(cls, n, seed=0, split="train"):
        return [Task(id=f"c{i}", env="counter", prompt="count to 3", answer=3) for i in range(n)]

    @tool
    def add(self, amount: int) -> str:
        """Add to the counter.

        Args:
            amount: how much to add
        """
        self.count += amount
        return str(self.count)

    def final_state(self):
        return {"count": self.count}


class StepRaises(Counter):
    async def step(self, calls):
        raise RuntimeError("backend down")


class Noisy(Counter):
    """Different opening message every time."""
    def messages(self):
        return [{"role": "user", "content": f"count to {random.random()}"}]


class NoTasks(ToolEnv):
    name = "no_tasks"


SHARED = {"count": 0}


class SharedState(Counter):
    """Keeps its count in a module-level dict: every instance sees every other's calls."""
    @tool
    def add(self, amount: int) -> str:
        """Add to the counter.

        Args:
            amount: how much to add
        """
        SHARED["count"] += amount
        return str(SHARED["count"])

    def final_state(self):
        return dict(SHARED)


class ReturnsObject(Counter):
    @tool
    def add(self, amount: int) -> object:
        """Add to the counter.

        Args:
            amount: how much to add
        """
        return object()


class WrongGold(Counter):
    @classmethod
    def tasks(cls, n, seed=0, split="train"):
        return [Task(id=f"c{i}", env="counter", prompt="count to 3", answer=3,
                     gold_calls=[{"name": "add", "arguments": {"amount": 2}}]) for i in range(n)]
'''


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "my_envs.py").write_text(BROKEN_ENVS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_envs"


def test_envs_load_by_name_module_and_entry_point(tmp_path, plugin_module, monkeypatch):
    assert load_env("calculator") is CalculatorEnv
    assert load_env("rlvr.envs.calculator:CalculatorEnv") is CalculatorEnv
    assert load_env(f"{plugin_module}:Counter").name == "counter"
    info = tmp_path / "my_envs-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-envs\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[rlvr.envs]\ncounter = my_envs:Counter\n")
    assert env_specs()["counter"] == "my_envs:Counter"
    assert load_env("counter").__name__ == "Counter"


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown env 'nope'; built-in and installed: .*calculator"),
    ("rlvr.envs.calculator:evaluate", "not a subclass of rlvr.envs.base.ToolEnv"),
    ("rlvr.envs.calculator:Nope", "has no attribute 'Nope'"),
    ("envs/calculator.py:CalculatorEnv", "envs are loaded from 'package.module:name', not from files"),
])
def test_bad_env_specs(spec, message):
    with pytest.raises(PluginError, match=message):
        load_env(spec)


def test_checker_passes_the_calculator_and_a_plain_plugin(plugin_module):
    for env in (CalculatorEnv, load_env(f"{plugin_module}:Counter")):
        report = asyncio.run(check_env(env))
        assert report.ok, report.violations
        assert any("wrong type -> bad_arguments" in p for p in report.passed)


@pytest.mark.parametrize("cls, violation", [
    ("StepRaises", "never raises: RuntimeError: backend down"),
    ("Noisy", "reset() is deterministic for a seed"),
    ("NoTasks", "task source gives tasks: NotImplementedError"),
    ("SharedState", "two env instances share no state: calls made in one changed the other's final_state()"),
    ("ReturnsObject", "tools return strings or JSON data: add returned object"),
    ("WrongGold", "gold calls score a pass: with the env's rewards {'numeric_answer': 0.0"),
])
def test_checker_reports_violations(plugin_module, cls, violation):
    from rlvr.rewards.scoring import Scorer

    env = load_env(f"{plugin_module}:{cls}")
    report = asyncio.run(check_env(env, scorer=Scorer.from_specs(env.rewards)))
    assert not report.ok and any(violation in v for v in report.violations), report.violations


def test_checker_catches_a_schema_that_disagrees_with_the_signature():
    class Liar(CalculatorEnv):
        def tool_schemas(self):
            schemas = super().tool_schemas()
            schemas[0]["function"]["parameters"]["properties"] = {"expr": {"type": "string", "description": "x"}}
            schemas[0]["function"]["parameters"]["required"] = ["expr"]
            return schemas

    report = asyncio.run(check_env(Liar))
    assert any("schema-built call to calculate is accepted: rejected" in v for v in report.violations)


def test_cli_envs_list_and_check(plugin_module):
    runner = CliRunner()
    listed = runner.invoke(app, ["envs", "list"])
    assert listed.exit_code == 0 and "calculator" in listed.output and "numeric_answer=1" in listed.output
    ok = runner.invoke(app, ["envs", "check", "calculator"])
    assert ok.exit_code == 0 and "0 violations" in ok.output
    bad = runner.invoke(app, ["envs", "check", f"{plugin_module}:StepRaises"])
    assert bad.exit_code == 1 and "FAIL" in bad.output
    missing = runner.invoke(app, ["envs", "check", "nope"])
    assert missing.exit_code == 2
    assert "numeric_answer" in runner.invoke(app, ["rewards", "list"]).output


@pytest.mark.parametrize("arguments, problem", [
    ({"n": 3, "tags": ["a"]}, None), ({"n": 3, "tags": None}, None), ({"n": 3, "x": 1}, "unknown argument(s) x"),
    ({"tags": []}, "missing argument(s) n"), ({"n": "3"}, "n must be integer, got str '3'"),
    ({"n": True}, "n must be integer, got bool True"), ({"n": 3, "ratio": 1}, None),
    ({"n": 3, "ratio": "1"}, "ratio must be number"), ({"n": 3, "anything": {"k": 1}}, None),
])
def test_schema_problem(arguments, problem):
    from rlvr.envs.base import schema_problem

    parameters = {"type": "object", "required": ["n"], "properties": {
        "n": {"type": "integer"}, "tags": {"type": "array"}, "ratio": {"type": "number"}, "anything": {}}}
    found = schema_problem(parameters, arguments)
    assert found == problem if problem is None else problem in found
