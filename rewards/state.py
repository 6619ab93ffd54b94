"""Final-state reward: the environment ended in the state the task expects."""

from __future__ import annotations

from rlvr.core.contract import Task, Trajectory
from rlvr.rewards.base import Score


def final_state_match(trajectory: Trajectory, task: Task) -> Score:
    """1.0 when every key of `task.expected_state` is in the trajectory's final state with an equal value.

    Envs return normalised, JSON-like final states (sorted rows, canonical records) so `==` is the test;
    keys the task does not constrain (e.g. a log of policy violations) are ignored. The component
    `keys_matched` is the fraction of expected keys that match, for logging partial progress."""
    if task.expected_state is None:
        raise ValueError(f"final_state: task {task.id} has no expected_state")
    if trajectory.final_state is None:
        raise ValueError(f"final_state: trajectory {trajectory.id} has no final_state (its env returned None)")
    matched = [trajectory.final_state.get(key, _MISSING) == value for key, value in task.expected_state.items()]
    fraction = sum(matched) / len(matched) if matched else 1.0
    return Score(total=float(all(matched)), components={"keys_matched": fraction})


_MISSING = object()
