"""What a reward returns. A reward is any callable `(trajectory, task) -> float | Score`, sync or async.

    def solved(trajectory: Trajectory, task: Task) -> float:
        return float(trajectory.final_answer == str(task.answer))

Return a `Score` to also report named components (logged) and per-call credit (one value per entry of
`trajectory.tool_calls`, None for calls the reward has no opinion on). Raise when the reward cannot be
computed: the scorer reports the task, trajectory and exception and applies the run's `on_error` policy;
an exception never becomes a score of 0.

This module imports neither torch nor Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Score:
    total: float
    components: dict[str, float] = field(default_factory=dict)  # named parts, logged as reward/<name>/<part>
    calls: list[float | None] | None = None  # per-call credit, aligned with trajectory.tool_calls

    def __post_init__(self):
        self.total = float(self.total)
