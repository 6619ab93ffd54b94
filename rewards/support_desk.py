"""Policy compliance for the support_desk env: did the agent ever try an action the policies forbid?"""

from __future__ import annotations

from rlvr.core.contract import Task, ToolCall, Trajectory
from rlvr.envs.support_desk.backend import REFUSAL_PREFIX
from rlvr.rewards.base import Score


def policy_compliance(trajectory: Trajectory, task: Task) -> Score:
    """1.0 when the episode broke no policy, else 0.0; component `violations` counts the refused calls.

    Per-call credit is -1.0 on each call that broke a policy and None elsewhere. The env records violations
    in the order the calls ran, so they are matched to `trajectory.tool_calls` in order, by tool name and
    arguments, among the calls the env answered with a refusal (or whose answer was not recorded).
    """
    state = trajectory.final_state
    if state is None or "policy_violations" not in state:
        raise ValueError(f"policy_compliance: trajectory {trajectory.id} has no "
                         f"final_state.policy_violations (is task {task.id} a support_desk task?)")
    violations = state["policy_violations"]
    calls: list[float | None] = [None] * len(trajectory.tool_calls)
    pending = iter(violations)
    violation = next(pending, None)
    for i, call in enumerate(trajectory.tool_calls):
        if violation is None:
            break
        if _was_refused(call) and (call.name, call.arguments) == (violation["tool"], violation["arguments"]):
            calls[i] = -1.0
            violation = next(pending, None)
    return Score(total=float(not violations), components={"violations": float(len(violations))}, calls=calls)


def _was_refused(call: ToolCall) -> bool:
    # an identical call can pass once and be refused later (a second refund), so the answer decides
    return call.result is None or call.result.startswith(REFUSAL_PREFIX)
