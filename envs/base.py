"""The environment interface: one env per trajectory, tools as typed, documented methods.

An environment is created from a Task (and a seed), then

    messages, tools = env.reset()          # the opening chat messages and the tools' JSON schemas
    result = await env.step(calls)         # execute the model's tool calls -> StepResult(results, done)
    env.final_state()                      # what the episode left behind, for scoring
    env.close()

Writing one: subclass ToolEnv, decorate tool methods with @tool (type hints and a Google-style docstring
become the JSON schema), and build the opening messages in `messages()`. Tools can also come from
toolsets, plain objects with @tool methods returned by `toolsets()` (an env composes the calculator or
the python sandbox rather than inheriting them). Tool methods are plain synchronous Python; ToolEnv runs
each call in a worker thread bounded by a per-call timeout, turns exceptions, timeouts, unknown tools and
bad arguments into error results the model can read, and never raises on model output.

Optional hooks: `tasks(n, seed, split, **options)` (the env's own task source), `next_messages(answer)`
(what replies to a final answer, for multi-turn conversations) or a `user` simulator that sees the whole
conversation (envs/users.py, awaited without blocking other rollouts), `state_key()` and
`call_progress(call)` (what per-call credit compares calls by and scores them with, docs/credit.md).

This module imports neither torch nor Ray.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from rlvr.core.contract import Message, Task, ToolCall, ToolCallError, Trajectory
from rlvr.core.schemas import tool_schema

# Tool calls run here rather than in asyncio's default pool (min(32, cores + 4) threads), so 64
# concurrent trajectories with slow tools do not queue behind each other. A call that times out keeps
# its thread until it returns: tools that can hang for good belong in a subprocess (see the python env).
_TOOL_THREADS = ThreadPoolExecutor(max_workers=128, thread_name_prefix="rlvr-tool")


def tool(fn: Callable) -> Callable:
    """Mark a method as a tool the model can call."""
    fn._rlvr_tool = True
    return fn


@dataclass
class StepResult:
    calls: list[ToolCall]  # the calls, with result, error and latency filled in
    done: bool = False  # the environment ended the episode (e.g. a submit tool was called)

    @property
    def results(self) -> list[str]:
        return [c.result or "" for c in self.calls]


class ToolEnv:
    """Base class for tool environments; subclasses add @tool methods (or toolsets) and `messages()`."""

    name: str = ""
    system_prompt: str | None = None
    # the env's success test (weight > 0) and logged metrics (weight 0), used when a run names no rewards
    rewards: ClassVar[dict[str, float]] = {"numeric_answer": 1.0, "tool_call_validity": 0.0}
    # how the calls of one assistant turn run: concurrently (stateless tools), or one after another in the
    # order written, for envs whose tools change state (concurrent calls on a shared state race)
    sequential_calls: ClassVar[bool] = False
    # a simulated user who answers the agent's final answers (envs/users.py), set per instance from the task;
    # None: `next_messages` decides. The user speaks at most max_user_turns times (None: until it is done)
    user: Any = None
    max_user_turns: ClassVar[int | None] = None
    # per-call credit from the state: the tasks' expected states come from replaying their gold calls
    # (with_gold_states) and each call scores whether it moved the final state toward them (call_progress)
    gold_state_credit: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.gold_state_credit and not cls.sequential_calls:
            raise TypeError(f"{cls.__name__}: gold_state_credit scores each call by the state it leaves, which "
                            "needs sequential_calls = True (concurrent calls change the state together)")

    def __init__(self, task: Task, seed: int = 0, tool_timeout_s: float = 10.0):
        self.task = task
        self.seed = seed
        self.tool_timeout_s = tool_timeout_s
        self._history: list[tuple[str | None, dict[str, Any], str | None]] = []  # executed (name, args, result)

    @functools.cached_property
    def _tools(self) -> dict[str, Callable]:
        tools: dict[str, Callable] = {}
        for owner in (self, *self.toolsets()):
            for name in _tool_methods(type(owner)):
                if name in tools:
                    raise TypeError(f"{type(self).__name__}: two tools are named {name!r}")
                tools[name] = getattr(owner, name)
        return tools

    # -- what a subclass provides ------------------------------------------------------------------

    @classmethod
    def tasks(cls, n: int, seed: int = 0, split: str = "train", **options: Any) -> list[Task]:
        """`n` tasks for this env, deterministic in `seed` (the env's built-in task source)."""
        raise NotImplementedError(f"env {cls.name or cls.__name__!r} has no built-in task source; "
                                  "give tasks as a JSON-lines file instead")

    def toolsets(self) -> list[Any]:
        """Objects whose @tool methods the env offers besides its own."""
        return []

    def messages(self) -> list[Message]:
        """The opening messages: the system prompt (if any) and the task's prompt."""
        opening = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        if isinstance(self.task.prompt, str):
            return opening + [{"role": "user", "content": self.task.prompt}]
        return opening + list(self.task.prompt)

    def final_state(self) -> dict[str, Any] | None:
        return None

    def next_messages(self, answer: str) -> list[Message]:
        """Messages that answer the model's final answer (e.g. the user's next request); [] ends the episode."""
        return []

    async def user_turn(self, conversation: list[Message], answer: str) -> list[Message]:
        """What follows the agent's final `answer` ([] ends the episode): the simulated `user`'s next message,
        which sees the whole `conversation`, while it has turns left; without a user, `next_messages(answer)`."""
        if self.user is None:
            return self.next_messages(answer)
        spoken = getattr(self, "_user_turns", 0)
        if self.max_user_turns is not None and spoken >= self.max_user_turns:
            return []
        text = await self.user.reply(conversation, self.task)
        if text is None:
            return []
        self._user_turns = spoken + 1
        return [{"role": "user", "content": text}]

    def state_key(self) -> str:
        """Identifies the state the next calls are made from; calls of a group made from equal keys are
        compared with each other by step-grouped credit. Default: the calls executed so far and their
        results (an env whose state can be reached several ways should hash the state itself)."""
        return hashlib.sha1(json.dumps(self._history, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def call_progress(self, call: ToolCall) -> float | None:
        """An env-specific score for a call that executed (e.g. +1 for a state change the goal needs).
        With `gold_state_credit`: +1 when the call brought the final state closer to the task's expected
        state (fewer differing leaves), -1 when farther, 0 when neither."""
        if not self.gold_state_credit or self.task.expected_state is None:
            return None
        before = getattr(self, "_distance", None)
        if before is None:
            before = self._distance = state_distance(self._initial_state, self.task.expected_state)
        self._distance = state_distance(self.final_state(), self.task.expected_state)
        return float((before > self._distance) - (before < self._distance))

    @classmethod
    def with_gold_states(cls, tasks: list[Task], seed: int = 0) -> list[Task]:
        """`tasks` with `expected_state` filled in, where missing, by the final state their gold calls leave
        on a fresh env (`replay_gold`): the generic "replay the gold actions, diff the final state" target of
        the `final_state` reward and of `gold_state_credit`. Tasks without gold calls stay as they are.
        Gold calls that fail are part of the replay (some benchmarks' gold fails on purpose)."""
        filled = []
        for task in tasks:
            if task.expected_state is None and task.gold_calls:
                env = cls(task, seed=seed)
                try:
                    env.reset()
                    _run_sync(replay_gold(env, task))
                    task = task.model_copy(update={"expected_state": env.final_state()})
                finally:
                    env.close()
            filled.append(task)
        return filled

    def close(self) -> None:
        pass

    # -- the interface -------------------------------------------------------------------------------

    @property
    def tool_names(self) -> set[str]:
        return set(self._tools)

    def tool_schemas(self) -> list[dict[str, Any]]:
        if self.task.tools is not None:
            return self.task.tools
        return [copy.deepcopy(_schema(type(fn.__self__), name)) for name, fn in self._tools.items()]

    def reset(self) -> tuple[list[Message], list[dict[str, Any]]]:
        if self.gold_state_credit:
            self._initial_state = self.final_state()
        return self.messages(), self.tool_schemas()

    async def step(self, calls: list[ToolCall]) -> StepResult:
        """Execute the calls, each bounded by the per-call timeout: concurrently, all anchored to the state
        before the step, or, with `sequential_calls`, one after another, each anchored to (and scored
        against) the state the previous one left."""
        if self.sequential_calls:
            for call in calls:
                call.anchor = self.state_key()
                await self._execute(call)
                self._record(call)
        else:
            anchor = self.state_key()
            for call in calls:
                call.anchor = anchor
            await asyncio.gather(*(self._execute(c) for c in calls))
            for call in calls:
                self._record(call)
        return StepResult(calls=calls, done=self.done)

    def _record(self, call: ToolCall) -> None:
        self._history.append((call.name, call.arguments, call.result))
        if call.error is None:
            progress = self.call_progress(call)
            if progress is not None:
                call.scores["progress"] = float(progress)

    @property
    def done(self) -> bool:
        """True once the env has ended the episode (e.g. a submit tool was called)."""
        return False

    async def _execute(self, call: ToolCall) -> None:
        if call.error is not None:  # parse errors and unknown tools already carry their message
            return
        fn = self._tools.get(call.name or "")
        if fn is None:
            call.error = ToolCallError.unknown_tool
            call.result = f"unknown tool {call.name!r}; available tools: {', '.join(sorted(self._tools))}"
            return
        problem = schema_problem(_schema(type(fn.__self__), fn.__name__)["function"]["parameters"], call.arguments)
        if problem:
            call.error, call.result = ToolCallError.bad_arguments, f"bad arguments for {call.name}: {problem}"
            return
        await run_tool(call, lambda: fn(**call.arguments), self.tool_timeout_s)


async def run_tool(call: ToolCall, run: Callable[[], Any], timeout_s: float,
                   describe_failure: Callable[[ToolCall, Exception], str] | None = None) -> None:
    """`run()` in a tool thread under the per-call timeout, filling the call's result, error and latency.

    The tool's own exception is an observation for the model, not a crash: it becomes the result text
    (`describe_failure(call, exception)`, by default "<tool> failed: <Type>: <message>")."""
    start = time.perf_counter()
    loop = asyncio.get_running_loop()
    try:
        value = await asyncio.wait_for(loop.run_in_executor(_TOOL_THREADS, run), timeout_s)
        call.result = tool_text(value)
    except asyncio.TimeoutError:
        call.error = ToolCallError.timeout
        call.result = f"{call.name} timed out after {timeout_s:g} s"
    except Exception as e:
        call.error = ToolCallError.raised
        call.result = (describe_failure(call, e) if describe_failure
                       else f"{call.name} failed: {type(e).__name__}: {e}")
    call.latency_s = time.perf_counter() - start


async def replay_gold(env: "ToolEnv", task: Task) -> list[tuple[ToolCall, str | None]]:
    """Run the task's gold calls in order on `env` (already reset), each turn closed by `closing(...)` and
    handed to `next_messages` (multi-turn envs move on to their next user turn). Returns each executed call
    with the closing text when it ends a turn (else None). The one replay behind synth's gold
    conversations, the checker, `with_gold_states` and bench/tau2_gold.py."""
    steps: list[tuple[ToolCall, str | None]] = []
    calls = task.gold_calls or []
    for i, gold in enumerate(calls):
        [call] = (await env.step([ToolCall(name=gold["name"], arguments=gold["arguments"], raw="(gold)",
                                           turn=gold.get("turn", 0))])).calls
        ends_turn = i == len(calls) - 1 or calls[i + 1].get("turn", 0) != gold.get("turn", 0)
        said = closing(task, call.result) if ends_turn else None
        if said is not None:
            env.next_messages(said)
        steps.append((call, said))
    return steps


async def gold_trajectory(env: "ToolEnv", task: Task) -> Trajectory:
    """The task's gold replayed on `env` (already reset) as a trajectory to score: the calls made, the
    closing words of each turn as the assistant's messages, the env's final state."""
    steps = await replay_gold(env, task)
    said = [{"role": "assistant", "content": text} for _, text in steps if text is not None]
    return Trajectory(id=f"{task.id}/gold", task_id=task.id, group_id=task.id, prompt_ids=[0], completion_ids=[0],
                      loss_mask=[1], logprobs=[0.0], tool_calls=[call for call, _ in steps],
                      final_answer=said[-1]["content"] if said else "", final_state=env.final_state(), messages=said)


def _run_sync(coroutine):
    """Run a coroutine to its end from sync code, also when the caller is inside a running event loop (the
    checker awaits a task source that replays gold calls): then in a thread with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def closing(task: Task, last_result: str | None) -> str:
    """The assistant's words that end a gold turn (synth's demonstrations, the checker's replay): the task's
    own `metadata["gold_answer"]` when it has one (what the agent must say, e.g. tau2's communicate_info),
    else "The answer is <the last call's result>." for a task with an answer, else "Done."."""
    if task.metadata.get("gold_answer"):
        return task.metadata["gold_answer"]
    return f"The answer is {last_result}." if task.answer is not None else "Done."


def state_distance(state: Any, expected: Any) -> int:
    """How many leaves of `expected` (a JSON-like dict/list tree) `state` misses or holds differently, plus
    the keys `state` has beyond it; lists of records with an "id" are matched by id, other lists by position."""
    if state is _ABSENT:
        return _leaves(expected)
    if isinstance(expected, dict) and isinstance(state, dict):
        return (sum(state_distance(state.get(k, _ABSENT), v) for k, v in expected.items())
                + sum(_leaves(v) for k, v in state.items() if k not in expected))
    if isinstance(expected, list) and isinstance(state, list):
        if all(isinstance(r, dict) and "id" in r for r in [*expected, *state]):
            return state_distance({str(r["id"]): r for r in state}, {str(r["id"]): r for r in expected})
        return (sum(state_distance(a, b) for a, b in zip(state, expected))
                + sum(_leaves(x) for x in (state[len(expected):] or expected[len(state):])))
    if isinstance(expected, (dict, list)) or isinstance(state, (dict, list)):
        return max(_leaves(expected), _leaves(state))  # a subtree against a value: all of it differs
    return int(state != expected)


def _leaves(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_leaves(v) for v in value.values()) or 1
    if isinstance(value, list):
        return sum(_leaves(v) for v in value) or 1
    return 1


_ABSENT = object()


def tool_text(value: Any) -> str:
    """What the model reads of a tool's return value: a string as it is, anything JSON can hold (dicts,
    lists, numbers, None) as JSON, anything else as str()."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


@functools.cache
def _tool_methods(cls: type) -> tuple[str, ...]:
    """Names of the @tool methods of an env class (looked up once per class: envs are made per trajectory)."""
    return tuple(sorted(name for name in dir(cls) if getattr(getattr(cls, name, None), "_rlvr_tool", False)))


@functools.cache
def _schema(cls: type, name: str) -> dict[str, Any]:
    return tool_schema(getattr(cls, name))


_SCHEMA_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float),
                                              "boolean": (bool,), "array": (list, tuple), "object": (dict,)}


def schema_problem(parameters: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    """None when `arguments` fit a tool's JSON-schema `parameters` (names, required ones, top-level
    types; null is accepted for an optional or nullable parameter), else what is wrong. ToolEnv checks
    every call against its tool's schema; envs whose tools are given as schemas use it too."""
    props = parameters.get("properties", {})
    unknown = sorted(set(arguments) - set(props))
    if unknown and parameters.get("additionalProperties") is not True:
        return f"unknown argument(s) {', '.join(unknown)}; expected {', '.join(props) or 'none'}"
    missing = [name for name in parameters.get("required", []) if name not in arguments]
    if missing:
        return f"missing argument(s) {', '.join(missing)}"
    required = set(parameters.get("required", []))
    for name, value in arguments.items():
        if value is None and (name not in required or props.get(name, {}).get("nullable")):
            continue
        declared = props.get(name, {}).get("type")
        kinds = [declared] if isinstance(declared, str) else declared or []
        allowed = tuple(t for k in kinds for t in _SCHEMA_TYPES.get(k, (object,)))
        if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
            return f"{name} must be {' or '.join(kinds)}, got {type(value).__name__} {value!r:.80}"
    return None

