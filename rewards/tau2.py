"""tau2-bench's communicate check as a reward (the tau2 env, envs/tau2.py)."""

from __future__ import annotations

from rlvr.core.contract import Task, Trajectory
from rlvr.rewards.base import Score


def communicate(trajectory: Trajectory, task: Task) -> Score:
    """1.0 when every string of `task.metadata["communicate_info"]` appears in one of the agent's messages,
    case-insensitively with commas removed (tau2's check); 1.0 for a task with nothing to communicate.
    Component `found`: the share of the strings found."""
    info = [str(i).lower().replace(",", "") for i in task.metadata.get("communicate_info") or []]
    said = [(m.get("content") or "").lower().replace(",", "") for m in trajectory.messages if m["role"] == "assistant"]
    found = [any(i in message for message in said) for i in info]
    return Score(total=float(all(found)), components={"found": sum(found) / len(found) if found else 1.0})
