"""What a reward returns. A reward is any callable `(trajectory, task) -> float | Score`, sync or async.

    def solved(trajectory: Trajectory, task: Task) -> float:
        return float(trajectory.final_answer == str(task.answer))

Return a `Score` to also report named components (logged), per-call credit (one value per entry of
`trajectory.tool_calls`, None for calls the reward has no opinion on) and whether the reward applies to the
trajectory at all (`applies=False` keeps it out of the reward's logged mean). Raise when the reward cannot be
computed: the scorer reports the task, trajectory and exception and applies the run's `on_error` policy;
an exception never becomes a score of 0.

This module imports neither torch nor Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NOT_APPLICABLE = "not_applicable"  # reward_components["<name>/not_applicable"] = 1.0: Score.applies was False


@dataclass
class Score:
    total: float
    components: dict[str, float] = field(default_factory=dict)  # named parts, logged as reward/<name>/<part>
    calls: list[float | None] | None = None  # per-call credit, aligned with trajectory.tool_calls
    # False: nothing in this trajectory for the reward to judge (tool-call validity without calls). `total`
    # still enters the combined reward; logged means of the reward leave the trajectory out
    applies: bool = True

    def __post_init__(self):
        self.total = float(self.total)


def applies(components: dict[str, float], name: str) -> bool:
    """Whether reward `name` applied to the trajectory whose `reward_components` these are."""
    return not components.get(f"{name}/{NOT_APPLICABLE}")


def component_means(components: list[dict[str, float]]) -> dict[str, float]:
    """The mean of every reward component over the trajectories' `reward_components`; a reward's own value
    only over the trajectories it applies to (absent when it applies to none)."""
    names = list(dict.fromkeys(name for c in components for name in c if not name.endswith("/" + NOT_APPLICABLE)))
    means = {}
    for name in names:
        values = [c[name] for c in components if name in c and applies(c, name)]
        if values:
            means[name] = sum(values) / len(values)
    return means
