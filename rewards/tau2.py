"""tau2-bench's communicate check as a reward (the tau2 env, envs/tau2.py)."""

from __future__ import annotations

from rlvr.core.contract import Task, Trajectory, spoken_text
from rlvr.rewards.base import Score


def communicate(trajectory: Trajectory, task: Task) -> Score:
    """tau2's communicate check where the task's reward basis has COMMUNICATE: 1.0 when every string of
    `metadata["communicate_info"]` appears in one of the agent's messages (their text, tool calls left
    out), case-insensitively with commas removed. 1.0 where tau2 does not check it (the basis lacks
    COMMUNICATE, or there is nothing to communicate). Component `found`: the share of the strings found."""
    basis = task.metadata.get("reward_basis")
    info = [str(i).lower().replace(",", "") for i in task.metadata.get("communicate_info") or []]
    if basis is not None and "COMMUNICATE" not in basis:
        info = []
    said = [spoken_text(m.get("content") or "").lower().replace(",", "") for m in trajectory.messages
            if m["role"] == "assistant"]
    found = [any(i in message for message in said) for i in info]
    return Score(total=float(all(found)), components={"found": sum(found) / len(found) if found else 1.0})
