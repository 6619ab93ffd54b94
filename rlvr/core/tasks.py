"""Where a run's tasks come from, and which tasks each step trains on.

`data.source` is `env` (the env's own task source, `Env.tasks(n, seed, split, **env.options)`, with
`env.conditions.no_tool_fraction` of them from `Env.no_tool_tasks`) or a JSON-lines file of Tasks. The batch of step k is a pure function of (seed, k): the tasks are visited in a
seeded order, epoch after epoch, so no task is skipped or repeated within an epoch, and a resumed run
needs nothing but its step number to continue where it stopped.
"""

from __future__ import annotations

import random
from pathlib import Path

from rlvr.core.contract import Task, load_jsonl


def load_tasks(source: str, env, count: int, seed: int, split: str, options: dict,
               what: str = "data.source", no_tool_fraction: float = 0.0) -> list[Task]:
    """`count` tasks from the env's task source (`source="env"`, see `env_tasks`) or all tasks of a
    JSON-lines file (rows may leave out "env": they are the run's env's; rows of another env are refused)."""
    if source == "env":
        return env_tasks(env, count, seed, split, options, no_tool_fraction)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{what}: {source!r} is neither 'env' nor a JSON-lines file of tasks")
    tasks = load_jsonl(path, Task, defaults={"env": env.name} if env is not None else None)
    if not tasks:
        raise ValueError(f"{what}: {path} holds no tasks")
    if env is not None:
        other = next((t for t in tasks if t.env != env.name), None)
        if other is not None:
            raise ValueError(f"{what}: task {other.id!r} in {path} is for env {other.env!r}; this run's env is "
                             f"{env.name!r}")
    return tasks


def env_tasks(env, count: int, seed: int, split: str, options: dict, no_tool_fraction: float = 0.0) -> list[Task]:
    """`count` tasks of the env's `split`: round(count * no_tool_fraction) of them from the env's
    `no_tool_tasks` (answerable without a tool; metadata needs_tool=False), the rest from its `tasks`,
    in a seeded order."""
    n_direct = round(count * no_tool_fraction)
    if n_direct and not hasattr(env, "no_tool_tasks"):
        raise ValueError(f"env.conditions.no_tool_fraction: env {env.name!r} has no no_tool_tasks() to draw "
                         "tasks that need no tool from")
    tasks = env.tasks(count - n_direct, seed=seed, split=split, **options)
    if not n_direct:
        return tasks
    tasks += env.no_tool_tasks(n_direct, seed=seed, split=split)
    random.Random(f"{seed}/{split}/mix").shuffle(tasks)
    return tasks


class TaskSampler:
    """Step k's tasks: slice k of the tasks in a per-epoch seeded order (see the module docstring)."""

    def __init__(self, tasks: list[Task], per_step: int, seed: int):
        if not tasks:
            raise ValueError("TaskSampler: no tasks")
        self.tasks, self.per_step, self.seed = tasks, per_step, seed
        self._orders: dict[int, list[int]] = {}

    def batch(self, step: int) -> list[Task]:
        """The tasks of step `step` (1-based)."""
        start = (step - 1) * self.per_step
        return [self._at(i) for i in range(start, start + self.per_step)]

    def extra(self, step: int, round: int) -> list[Task]:
        """More tasks for step `step` (DAPO refill round `round` >= 1): a seeded draw of its own, so a resumed
        run draws the same ones and the steps' own slices stay untouched."""
        rng = random.Random(f"{self.seed}/extra/{step}/{round}")
        return rng.sample(self.tasks, min(self.per_step, len(self.tasks)))

    def _at(self, position: int) -> Task:
        epoch, index = divmod(position, len(self.tasks))
        if epoch not in self._orders:
            order = list(range(len(self.tasks)))
            random.Random(f"{self.seed}/{epoch}").shuffle(order)
            self._orders = {epoch: order}  # steps move forward: one epoch's order at a time is enough
        return self.tasks[self._orders[epoch][index]]
