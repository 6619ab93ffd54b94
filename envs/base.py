"""The environment interface: one env per trajectory, tools as typed, documented methods.

An environment is created from a Task (and a seed), then

    messages, tools = env.reset()          # the opening chat messages and the tools' JSON schemas
    result = await env.step(calls)         # execute the model's tool calls -> StepResult(results, done)
    env.final_state()                      # what the episode left behind, for scoring
    env.close()

Writing one: subclass ToolEnv, decorate tool methods with @tool (type hints and a Google-style docstring
become the JSON schema), and build the opening messages in `messages()`. Tool methods are plain
synchronous Python; ToolEnv runs each call in a worker thread bounded by a per-call timeout, turns
exceptions, timeouts, unknown tools and bad arguments into error results the model can read, and never
raises on model output.

This module imports neither torch nor Ray.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from rlvr.contract import Message, Task, ToolCall, ToolCallError

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
    """Base class for tool environments; subclasses add @tool methods and `messages()`."""

    name: str = ""
    system_prompt: str | None = None

    def __init__(self, task: Task, seed: int = 0, tool_timeout_s: float = 10.0):
        self.task = task
        self.seed = seed
        self.tool_timeout_s = tool_timeout_s
        self._tools = {name: getattr(self, name) for name in _tool_methods(type(self))}

    # -- what a subclass provides ------------------------------------------------------------------

    def messages(self) -> list[Message]:
        """The opening messages: the system prompt (if any) and the task's prompt."""
        opening = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        if isinstance(self.task.prompt, str):
            return opening + [{"role": "user", "content": self.task.prompt}]
        return opening + list(self.task.prompt)

    def final_state(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        pass

    # -- the interface -------------------------------------------------------------------------------

    @property
    def tool_names(self) -> set[str]:
        return set(self._tools)

    def tool_schemas(self) -> list[dict[str, Any]]:
        if self.task.tools is not None:
            return self.task.tools
        return copy.deepcopy(_schemas(type(self)))

    def reset(self) -> tuple[list[Message], list[dict[str, Any]]]:
        return self.messages(), self.tool_schemas()

    async def step(self, calls: list[ToolCall]) -> StepResult:
        """Execute the calls concurrently; each is bounded by the per-call timeout."""
        await asyncio.gather(*(self._execute(c) for c in calls))
        return StepResult(calls=calls)

    async def _execute(self, call: ToolCall) -> None:
        if call.error is not None:  # parse errors and unknown tools already carry their message
            return
        fn = self._tools.get(call.name or "")
        if fn is None:
            call.error = ToolCallError.unknown_tool
            call.result = f"unknown tool {call.name!r}; available tools: {', '.join(sorted(self._tools))}"
            return
        problem = _check_arguments(fn, call.arguments)
        if problem:
            call.error, call.result = ToolCallError.bad_arguments, f"bad arguments for {call.name}: {problem}"
            return
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            value = await asyncio.wait_for(loop.run_in_executor(_TOOL_THREADS, lambda: fn(**call.arguments)),
                                           self.tool_timeout_s)
            call.result = value if isinstance(value, str) else str(value)
        except asyncio.TimeoutError:
            call.error = ToolCallError.timeout
            call.result = f"{call.name} timed out after {self.tool_timeout_s:g} s"
        except Exception as e:  # the tool's own failure is an observation for the model, not a crash
            call.error = ToolCallError.raised
            call.result = f"{call.name} failed: {type(e).__name__}: {e}"
        call.latency_s = time.perf_counter() - start


@functools.cache
def _tool_methods(cls: type) -> tuple[str, ...]:
    """Names of the @tool methods of an env class (looked up once per class: envs are made per trajectory)."""
    return tuple(sorted(name for name in dir(cls) if getattr(getattr(cls, name, None), "_rlvr_tool", False)))


@functools.cache
def _schemas(cls: type) -> list[dict[str, Any]]:
    from transformers.utils import get_json_schema  # no torch import behind it

    return [get_json_schema(getattr(cls, name)) for name in _tool_methods(cls)]


_JSON_TYPES = {int: (int,), float: (int, float), str: (str,), bool: (bool,), list: (list,), dict: (dict,)}


def _check_arguments(fn: Callable, arguments: dict[str, Any]) -> str | None:
    """None when `arguments` fit the tool's signature, else what is wrong (missing, unknown, wrong type)."""
    params = inspect.signature(fn).parameters
    unknown = sorted(set(arguments) - set(params))
    if unknown:
        return f"unknown argument(s) {', '.join(unknown)}; expected {', '.join(params)}"
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in arguments]
    if missing:
        return f"missing argument(s) {', '.join(missing)}"
    hints = inspect.get_annotations(fn, eval_str=True)
    for name, value in arguments.items():
        expected = _JSON_TYPES.get(hints.get(name))
        if expected and (not isinstance(value, expected) or (bool not in expected and isinstance(value, bool))):
            return f"{name} must be {hints[name].__name__}, got {type(value).__name__} {value!r}"
    return None
