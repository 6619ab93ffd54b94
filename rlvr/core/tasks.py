"""Where a run's tasks come from, and which tasks each step trains on.

`data.source` is `env` (the env's own task source, `Env.tasks(n, seed, split, **env.options)`, with
`env.conditions.no_tool_fraction` of them from `Env.no_tool_tasks`), a JSON-lines file of Tasks, or a
`datasets` dataset whose columns `data.columns` maps onto Task fields (a `save_to_disk` folder, Parquet or
CSV files, JSON files when data.columns is set, or `hf:ID[:CONFIG]` where a hub is reachable), as users of
TRL and verl keep their data. The batch of step k is a pure function of (seed, k): the tasks are visited in a
seeded order, epoch after epoch, so no task is skipped or repeated within an epoch, and a resumed run
needs nothing but its step number to continue where it stopped.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pydantic import ValidationError

from rlvr.core.config import TaskColumns
from rlvr.core.contract import Task, first_error, load_jsonl


def load_tasks(source: str, env, count: int, seed: int, split: str, options: dict,
               what: str = "data.source", no_tool_fraction: float = 0.0,
               columns: TaskColumns | None = None) -> list[Task]:
    """`count` tasks from the env's task source (`source="env"`, see `env_tasks`), all rows of the `split`
    of a `datasets` dataset (see `dataset_tasks`), or all tasks of a JSON-lines file (rows may leave out
    "env": they are the run's env's; rows of another env are refused)."""
    if source == "env":
        return env_tasks(env, count, seed, split, options, no_tool_fraction)
    columns = columns or TaskColumns()
    if is_dataset(source, columns):
        return _gold_states(env, dataset_tasks(source, env.name, split, columns, what), seed)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{what}: {source!r} is neither 'env' nor a JSON-lines file of tasks")
    tasks = load_jsonl(path, Task, defaults={"env": env.name} if env is not None else None)
    if not tasks:
        raise ValueError(f"{what}: {path} holds no tasks")
    tasks = _gold_states(env, tasks, seed)
    if env is not None:
        other = next((t for t in tasks if t.env != env.name), None)
        if other is not None:
            raise ValueError(f"{what}: task {other.id!r} in {path} is for env {other.env!r}; this run's env is "
                             f"{env.name!r}")
    return tasks


def _gold_states(env, tasks: list[Task], seed: int) -> list[Task]:
    """Expected states from the gold calls, for envs that score calls against them (ToolEnv.gold_state_credit)."""
    return env.with_gold_states(tasks, seed=seed) if getattr(env, "gold_state_credit", False) else tasks


DATASET_FILES = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def is_dataset(source: str, columns: TaskColumns) -> bool:
    """A source read with `datasets` rather than as JSON lines of Tasks: a `save_to_disk` folder, Parquet or
    CSV files, a hub id, or JSON files whose columns data.columns renames."""
    path = Path(source)
    saved = path.is_dir() and any((path / marker).exists() for marker in ("dataset_dict.json", "dataset_info.json"))
    return (source.startswith("hf:") or saved or path.suffix in (".parquet", ".csv")
            or (path.suffix in (".json", ".jsonl") and columns != TaskColumns()))


def dataset_tasks(source: str, env_name: str, split: str, columns: TaskColumns, what: str) -> list[Task]:
    """Every row of the `split` of a `datasets` dataset as a Task of env `env_name`, its fields from the
    columns `columns` names. A dataset with one split is used whatever `split` is asked; JSON strings in
    the tools, gold_calls and expected_state columns are decoded. A bad row fails naming its index."""
    rows = _load_split(source, split, what)
    present = set(rows.column_names)
    named = {field: getattr(columns, field) for field in ("id", "prompt", "answer", "tools", "gold_calls",
                                                         "expected_state")}
    renamed = columns.model_fields_set - {"metadata"}
    missing = sorted({named["prompt"], *(named[f] for f in renamed), *columns.metadata} - present)
    if missing:
        raise ValueError(f"{what}: {source} has no column {', '.join(map(repr, missing))} (data.columns); its "
                         f"columns: {', '.join(rows.column_names)}")
    base = f"{Path(source.removeprefix('hf:')).name or 'dataset'}-{split}"
    tasks = []
    for index, row in enumerate(rows):
        fields: dict = {"env": env_name, "id": f"{base}-{index}",
                        "metadata": {name: row[name] for name in columns.metadata}}
        try:
            for field, column in named.items():
                value = row.get(column)
                if value is None:
                    continue
                if field in ("tools", "gold_calls", "expected_state"):
                    # Arrow stores nested columns as structs whose keys are the union over rows, null where a
                    # row lacks one: drop those (a JSON-string column keeps its nulls as written)
                    value = json.loads(value) if isinstance(value, str) else _without_nulls(value)
                fields[field] = str(value) if field == "id" else value
            tasks.append(Task.model_validate(fields))
        except (json.JSONDecodeError, ValidationError) as e:
            problem = str(e).splitlines()[0] if isinstance(e, json.JSONDecodeError) else first_error(e)
            raise ValueError(f"{what}: {source} row {index} is not a valid Task: {problem}") from None
    if not tasks:
        raise ValueError(f"{what}: {source} ({split}) holds no rows")
    return tasks


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _load_split(source: str, split: str, what: str):
    import datasets

    try:
        if source.startswith("hf:"):
            name, _, config = source.removeprefix("hf:").partition(":")
            loaded = datasets.load_dataset(name, config or None)
        elif Path(source).is_dir():
            loaded = datasets.load_from_disk(source)
        else:
            loaded = datasets.load_dataset(DATASET_FILES[Path(source).suffix], data_files=source)
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as e:
        raise ValueError(f"{what}: cannot load the dataset {source}: {type(e).__name__}: {e}") from None
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if split in loaded:
        return loaded[split]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise ValueError(f"{what}: {source} has no split {split!r} (it has {', '.join(loaded)})")


def env_tasks(env, count: int, seed: int, split: str, options: dict, no_tool_fraction: float = 0.0) -> list[Task]:
    """`count` tasks of the env's `split`: round(count * no_tool_fraction) of them from the env's
    `no_tool_tasks` (answerable without a tool; metadata needs_tool=False), the rest from its `tasks`,
    in a seeded order."""
    n_direct = round(count * no_tool_fraction)
    if n_direct and not hasattr(env, "no_tool_tasks"):
        raise ValueError(f"env.conditions.no_tool_fraction: env {env.name!r} has no no_tool_tasks() to draw "
                         "tasks that need no tool from")
    tasks = _gold_states(env, env.tasks(count - n_direct, seed=seed, split=split, **options), seed)
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
