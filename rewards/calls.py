"""Per-call checks and the tool-call validity reward.

Every tool call is checked for what any environment can judge from the call alone:
    parsed           the text parsed as a call
    known_tool       it names a tool of the environment
    valid_arguments  its arguments fit the tool's schema
    executed         it ran without raising or timing out
    novel            no earlier call of the trajectory that ran had the same name and arguments
Each check is 1.0 or 0.0; a call that failed an early check fails the later ones. A call that failed
transiently (env.conditions) never ran: the same call made again is a retry, and novel.
"""

from __future__ import annotations

import json

from rlvr.core.contract import REJECTED_CALLS, Task, ToolCall, ToolCallError, Trajectory
from rlvr.rewards.base import Score

CHECKS = ("parsed", "known_tool", "valid_arguments", "executed", "novel")

_FAILED_AT = {ToolCallError.parse: 0, ToolCallError.unknown_tool: 1, ToolCallError.bad_arguments: 2,
              ToolCallError.raised: 3, ToolCallError.timeout: 3, ToolCallError.transient: 3}


def call_checks(trajectory: Trajectory) -> list[dict[str, float]]:
    """The CHECKS of every call of the trajectory, in order."""
    seen: set[str] = set()
    checks = []
    for call in trajectory.tool_calls:
        failed_at = _FAILED_AT.get(call.error, len(CHECKS) - 1)  # no error: all but `novel` pass
        values = {name: float(i < failed_at) for i, name in enumerate(CHECKS[:-1])}
        key = _call_key(call)
        values["novel"] = float(call.error != ToolCallError.parse and key not in seen)
        if call.error != ToolCallError.transient:
            seen.add(key)
        checks.append(values)
    return checks


def _call_key(call: ToolCall) -> str:
    return json.dumps([call.name, call.arguments], sort_keys=True, default=str)


def tool_call_validity(trajectory: Trajectory, task: Task) -> Score:
    """The fraction of calls that parsed, named a known tool and had schema-valid arguments, with per-call
    credit 1.0 / 0.0 and the counts of each failure kind. Without calls: 1.0 (nothing invalid was written),
    marked as not applying, so the logged validity is over trajectories that made calls."""
    checks = call_checks(trajectory)
    valid = [c["parsed"] * c["known_tool"] * c["valid_arguments"] for c in checks]
    components = {"calls": float(len(checks))}
    for kind in REJECTED_CALLS:
        components[kind.value] = float(sum(c.error == kind for c in trajectory.tool_calls))
    total = sum(valid) / len(valid) if valid else 1.0
    return Score(total=total, components=components, calls=valid, applies=bool(valid))


def tool_calls(trajectory: Trajectory, task: Task) -> float:
    """The number of tool calls the trajectory made. With a negative weight it is a per-call cost
    (`env.conditions.call_cost` adds it so): calls that are not needed then lower the reward."""
    return float(len(trajectory.tool_calls))


def unnecessary_calls(trajectory: Trajectory, task: Task) -> float:
    """The number of tool calls made on a task that needs no tool (metadata `needs_tool: false`, e.g.
    env.conditions.no_tool_fraction's tasks), else 0. With a negative weight it teaches restraint where a
    call is never needed without taxing the calls a task does need (what `tool_calls` as a cost does)."""
    return float(len(trajectory.tool_calls)) if task.needs_no_tool else 0.0
