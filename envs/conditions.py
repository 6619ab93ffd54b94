"""Realistic tool conditions for any env: what clean demonstrations never show.

Real tools fail transiently (rate limits, outages, gateway timeouts) and a retry succeeds; real calls
cost time or money; and many requests need no tool at all. `env.conditions` turns these on for training
and evaluation rollouts (docs/environments.md):

    failure_rate      the share of tool calls that fail with an API-like error text instead of running,
                      drawn from the trajectory's seed and the call's position, so a rollout replays exactly
    call_cost         subtracted from the reward per tool call (the `tool_calls` reward with weight -cost)
    no_tool_fraction  the share of tasks that need no tool (the env's `no_tool_tasks`): a call there is
                      unnecessary

A transiently failed call never reaches the env (like a request the server refused), so the env's state
does not change and the same call, made again, runs. This module imports neither torch nor Ray.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from rlvr.core.contract import Task, ToolCall, ToolCallError

TRANSIENT_ERRORS = (
    "Error 429 Too Many Requests: rate limit exceeded for {tool}. Retry the call.",
    "Error 503 Service Unavailable: {tool} is temporarily unavailable. Please try again.",
    "Error 504 Gateway Timeout: {tool} did not answer in time. Retry the request.",
)


def with_transient_failures(make_env: Callable[..., Any], failure_rate: float) -> Callable[..., Any]:
    """`make_env(task, seed=, tool_timeout_s=)` whose envs fail `failure_rate` of their tool calls
    transiently; `make_env` itself when the rate is 0."""
    if not 0.0 <= failure_rate < 1.0:
        raise ValueError(f"failure_rate must be in [0, 1), got {failure_rate}")
    if failure_rate == 0.0:
        return make_env

    def make(task: Task, seed: int = 0, **kwargs: Any) -> UnreliableTools:
        return UnreliableTools(make_env(task, seed=seed, **kwargs), failure_rate, seed)

    return make


class UnreliableTools:
    """An env whose tool calls fail transiently at `failure_rate`; everything else is the wrapped env's.

    Call k of the trajectory (counting calls that parsed and name a known tool) fails when
    Random(f"{seed}/{k}").random() < failure_rate: independent of the policy's other choices, equal for
    every policy evaluated with the same seed, so comparisons between policies are paired. Calls whose k is
    in `failing_calls` always fail (synth's recovery demonstrations script where the failure falls)."""

    def __init__(self, env: Any, failure_rate: float, seed: int, failing_calls: frozenset[int] = frozenset()):
        self.env, self.failure_rate, self.seed, self.failing_calls = env, failure_rate, seed, failing_calls
        self.attempts = 0  # calls that could have run so far

    def __getattr__(self, name: str) -> Any:  # reset, tool_names, final_state, next_messages, close, ...
        return getattr(self.env, name)

    async def step(self, calls: list[ToolCall]):
        for call in calls:
            if call.error is not None or call.name not in self.env.tool_names:
                continue  # a parse error or an unknown tool: the env answers it as usual
            draw = random.Random(f"{self.seed}/{self.attempts}")
            self.attempts += 1
            if draw.random() < self.failure_rate or self.attempts - 1 in self.failing_calls:
                call.error = ToolCallError.transient
                call.result = draw.choice(TRANSIENT_ERRORS).format(tool=call.name)
                call.latency_s = 0.0
        return await self.env.step(calls)  # the env skips calls that carry an error already
