"""An environment checker in the spirit of Gymnasium's: drive an env through reset/step with valid,
invalid and garbage calls and report every violation of the ToolEnv contract.

    report = asyncio.run(check_env(MyEnv))      # or `rlvr envs check my_env`
    report.ok, report.lines()

What it checks: the task source gives tasks; reset returns chat messages and well-formed tool schemas;
two envs built with the same seed behave identically; a call built from each tool's schema is accepted
(not rejected as bad arguments: schema and signature agree); unknown tools, missing, extra and
wrongly-typed arguments and unparsable garbage come back as error results of the right kind instead
of exceptions; every step finishes within the per-call timeout; the final state is JSON; the state
key is a string; next_messages returns messages; close works; two instances share no state (calls in one
leave the other's final state alone); tools return strings or JSON data; the task's gold calls, if any,
replay and, given a Scorer of the env's rewards (`rlvr envs check` gives one), pass them (gold calls that
fail are listed as notes: some benchmarks' gold fails on purpose). An env class with a `diagnostics()`
classmethod (e.g. the python env: which sandbox layers are active) has its lines printed as `info`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from rlvr.core.contract import Task, ToolCall, ToolCallError
from rlvr.envs.base import ToolEnv, gold_trajectory

_ROLES = {"system", "user", "assistant", "tool"}
_SAMPLE = {"string": "1", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
_WRONG = {"string": 12345, "integer": "not a number", "number": "not a number", "boolean": "yes",
          "array": "not a list", "object": "not an object"}


@dataclass
class CheckReport:
    env: str
    passed: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # the env's own diagnostics(), informational

    @property
    def ok(self) -> bool:
        return not self.violations

    def lines(self) -> list[str]:
        return ([f"info  {n}" for n in self.notes] + [f"ok    {p}" for p in self.passed]
                + [f"FAIL  {v}" for v in self.violations])


async def check_env(env_cls: type[ToolEnv], task: Task | None = None, seed: int = 0,
                    tool_timeout_s: float = 10.0, scorer: Any = None) -> CheckReport:
    """`scorer`: a rlvr.rewards Scorer (the env's default rewards, as `rlvr envs check` passes) that the
    task's gold calls must pass; without one they need only replay without errors."""
    report = CheckReport(env=env_cls.name or env_cls.__name__)

    def expect(condition: bool, what: str, why: str = "") -> bool:
        if condition:
            if what not in report.passed:
                report.passed.append(what)
        else:
            report.violations.append(f"{what}: {why}" if why else what)
        return condition

    if callable(getattr(env_cls, "diagnostics", None)):
        try:
            report.notes = [str(line) for line in env_cls.diagnostics()]
        except Exception as e:
            expect(False, "diagnostics() runs", f"{type(e).__name__}: {e}")

    if task is None:
        try:
            tasks = env_cls.tasks(2, seed=seed)
        except Exception as e:
            expect(False, "task source gives tasks", f"{type(e).__name__}: {e} (pass a task to check)")
            return report
        if not expect(len(tasks) == 2 and all(isinstance(t, Task) for t in tasks), "task source gives tasks",
                      f"tasks(2) returned {tasks!r:.200}"):
            return report
        expect(tasks == env_cls.tasks(2, seed=seed), "task source is deterministic in its seed")
        task = tasks[0]

    envs = []
    try:
        for _ in range(2):
            try:
                envs.append(env_cls(task, seed=seed, tool_timeout_s=tool_timeout_s))
            except Exception as e:
                expect(False, "env constructs from (task, seed, tool_timeout_s)", f"{type(e).__name__}: {e}")
                return report
        opened = []
        for env in envs:
            try:
                opened.append(env.reset())
            except Exception as e:
                expect(False, "reset() runs", f"{type(e).__name__}: {e}")
                return report
        messages, tools = opened[0]
        expect(opened[0] == opened[1], "reset() is deterministic for a seed")
        expect(isinstance(messages, list) and bool(messages) and all(_is_message(m) for m in messages),
               "reset() returns chat messages", f"got {messages!r:.200}")
        names = _check_schemas(tools, expect)
        if task.tools is None:
            expect(names == env.tool_names, "schemas name exactly the env's tools",
                   f"schemas {sorted(names)} vs tools {sorted(env.tool_names)}")
        calls_per_tool = [_valid_call(schema) for schema in tools if _schema_ok(schema)]
        _check_returns(envs[0], calls_per_tool, expect)
        untouched = _state(envs[1])
        results = [await _step(envs[0], [c.model_copy(deep=True) for c in calls_per_tool], expect, "valid calls",
                               tool_timeout_s)]
        expect(_state(envs[1]) == untouched, "two env instances share no state",
               "calls made in one changed the other's final_state(): keep state on the instance, not the class")
        results.append(await _step(envs[1], [c.model_copy(deep=True) for c in calls_per_tool], expect,
                                   "valid calls", tool_timeout_s))
        if results[0] is not None and results[1] is not None:
            for call in results[0]:
                expect(call.error != ToolCallError.bad_arguments, f"schema-built call to {call.name} is accepted",
                       f"rejected: {call.result}")
            expect([c.result for c in results[0]] == [c.result for c in results[1]],
                   "same calls give the same results for a seed")
        env = envs[0]
        for label, calls, kind in _bad_calls(tools):
            done = await _step(env, calls, expect, label, tool_timeout_s)
            if done is not None and kind is not None:
                expect(all(c.error == kind and c.result for c in done),
                       f"{label} -> {kind.value} error with a message",
                       "; ".join(f"{c.error} {c.result!r:.80}" for c in done))
        _check_after(env, expect)
    finally:
        for env in envs:
            try:
                env.close()
            except Exception as e:
                expect(False, "close() runs", f"{type(e).__name__}: {e}")
    if task.gold_calls:
        await _check_gold(env_cls, task, seed, tool_timeout_s, scorer, expect, report)
    return report


def _state(env: ToolEnv) -> str:
    try:
        return json.dumps(env.final_state(), sort_keys=True, default=str)
    except Exception as e:  # reported by _check_after
        return f"{type(e).__name__}"


def _check_returns(env: ToolEnv, calls: list[ToolCall], expect) -> None:
    """Each @tool method returns a string or something JSON can hold (called directly, on a scratch env)."""
    scratch = type(env)(env.task, seed=env.seed, tool_timeout_s=env.tool_timeout_s)
    try:
        for call in calls:
            fn = scratch._tools.get(call.name or "")
            if fn is None:
                continue  # tools given as schemas (task.tools)
            try:
                value = fn(**call.arguments)
            except Exception:
                continue  # an error answer is checked elsewhere
            try:
                ok = isinstance(value, str) or json.dumps(value) is not None
            except (TypeError, ValueError):
                ok = False
            expect(ok, "tools return strings or JSON data",
                   f"{call.name} returned {type(value).__name__}: the model would read its str(), {str(value)!r:.80}")
    finally:
        scratch.close()


async def _check_gold(env_cls: type[ToolEnv], task: Task, seed: int, timeout_s: float, scorer, expect,
                      report: CheckReport) -> None:
    """The task's gold calls, replayed turn by turn on a fresh env and closed as `rlvr synth` closes them,
    pass `scorer`'s rewards; gold calls that fail are listed as notes."""
    env = env_cls(task, seed=seed, tool_timeout_s=timeout_s)
    try:
        env.reset()
        trajectory = await gold_trajectory(env, task)
        failed = [c for c in trajectory.tool_calls if c.error is not None]
        if failed:  # some benchmarks' gold fails on purpose (a lookup by a wrong email first): worth a look
            report.notes.append("gold calls that fail: " + "; ".join(f"{c.name}: {c.result!r:.80}" for c in failed))
        if scorer is None:
            return
        scored = await scorer.score(trajectory, task)
        passing = [term.name for term in scorer.terms if term.weight > 0]
        components = scored.reward_components if scored is not None else {}
        expect(all(components.get(name, 0.0) >= 1.0 for name in passing), "gold calls score a pass",
               f"with the env's rewards {components}")
    except Exception as e:
        expect(False, "gold calls replay", f"{type(e).__name__}: {e}")
    finally:
        env.close()


def _is_message(m: Any) -> bool:
    return isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content", ""), (str, list))


def _schema_ok(schema: Any) -> bool:
    fn = schema.get("function") if isinstance(schema, dict) else None
    params = fn.get("parameters") if isinstance(fn, dict) else None
    return (isinstance(fn, dict) and isinstance(fn.get("name"), str) and bool(fn["name"])
            and isinstance(params, dict) and params.get("type") == "object"
            and isinstance(params.get("properties", {}), dict))


def _check_schemas(tools: Any, expect) -> set[str]:
    if not expect(isinstance(tools, list), "reset() returns a list of tool schemas", f"got {type(tools).__name__}"):
        return set()
    bad = [t for t in tools if not _schema_ok(t)]
    expect(not bad, "tool schemas are {type: function, function: {name, parameters: {type: object}}}",
           f"malformed: {bad!r:.300}")
    names = [t["function"]["name"] for t in tools if _schema_ok(t)]
    expect(len(names) == len(set(names)), "tool names are unique", f"{names}")
    undocumented = [t["function"]["name"] for t in tools if _schema_ok(t) and not t["function"].get("description")]
    expect(not undocumented, "every tool has a description", f"no description: {undocumented}")
    return set(names)


def _valid_call(schema: dict) -> ToolCall:
    fn = schema["function"]
    props = fn["parameters"].get("properties", {})
    required = fn["parameters"].get("required", list(props))
    args = {name: _sample(props.get(name, {})) for name in required}
    return ToolCall(name=fn["name"], arguments=args, raw=json.dumps({"name": fn["name"], "arguments": args}))


def _sample(prop: dict) -> Any:
    if prop.get("enum"):
        return prop["enum"][0]
    kind = prop.get("type", "string")
    return _SAMPLE.get(kind[0] if isinstance(kind, list) else kind, "1")


def _bad_calls(tools: list) -> list[tuple[str, list[ToolCall], ToolCallError | None]]:
    cases = [("a call to an unknown tool", [ToolCall(name="no_such_tool_xyz", arguments={})], ToolCallError.unknown_tool),
             ("unparsable garbage", [ToolCall(raw="<tool_call>{\"name\": \x00\ufffd garbage", error=ToolCallError.parse,
                                              result="could not parse the tool call")], ToolCallError.parse)]
    for schema in (t for t in tools if _schema_ok(t)):
        fn = schema["function"]
        props = fn["parameters"].get("properties", {})
        good = _valid_call(schema).arguments
        name = fn["name"]
        cases.append((f"{name} with an extra argument",
                      [ToolCall(name=name, arguments={**good, "zz_unexpected": 1})], ToolCallError.bad_arguments))
        if good:
            first = next(iter(good))
            cases.append((f"{name} without its required {first}",
                          [ToolCall(name=name, arguments={k: v for k, v in good.items() if k != first})],
                          ToolCallError.bad_arguments))
            kind = props.get(first, {}).get("type")
            if isinstance(kind, str) and kind in _WRONG:
                cases.append((f"{name} with {first} of the wrong type",
                              [ToolCall(name=name, arguments={**good, first: _WRONG[kind]})], ToolCallError.bad_arguments))
        strings = [k for k in good if props.get(k, {}).get("type") == "string"]
        if strings:  # any outcome will do (a result or an error), as long as the env answers
            cases.append((f"{name} with 1 MB of garbage as {strings[0]}",
                          [ToolCall(name=name, arguments={**good, strings[0]: "\x00\ufffd{" * 2**18})], None))
    return cases


async def _step(env: ToolEnv, calls: list[ToolCall], expect, label: str, timeout_s: float) -> list[ToolCall] | None:
    """Run one step; None (and a violation) when it raised, hung, or left a call unanswered."""
    start = time.perf_counter()
    try:
        result = await asyncio.wait_for(env.step(calls), timeout_s * 2 + 5)
    except asyncio.TimeoutError:
        expect(False, f"step({label}) returns", f"hung past {timeout_s * 2 + 5:g} s")
        return None
    except Exception as e:
        expect(False, f"step({label}) never raises", f"{type(e).__name__}: {e}")
        return None
    answered = all(isinstance(c.result, str) for c in result.calls)
    in_time = time.perf_counter() - start <= timeout_s * 2 + 1
    if not answered:
        expect(False, f"step({label}) answers every call", "a call has no result text")
    if not in_time:
        expect(False, f"step({label}) respects the per-call timeout")
    expect(answered and in_time, "every step answers every call within the per-call timeout and never raises")
    return result.calls if answered else None


def _check_after(env: ToolEnv, expect) -> None:
    try:
        state = env.final_state()
        json.dumps(state)
        expect(state is None or isinstance(state, dict), "final_state() is a JSON object or None", f"got {type(state)}")
    except Exception as e:
        expect(False, "final_state() is JSON-serialisable", f"{type(e).__name__}: {e}")
    try:
        expect(isinstance(env.state_key(), str), "state_key() is a string")
    except Exception as e:
        expect(False, "state_key() runs", f"{type(e).__name__}: {e}")
    try:
        replies = env.next_messages("I am done.")
        expect(isinstance(replies, list) and all(_is_message(m) for m in replies), "next_messages() returns messages",
               f"got {replies!r:.200}")
    except Exception as e:
        expect(False, "next_messages() runs", f"{type(e).__name__}: {e}")
