"""The reasoning-gym environment: tasks from any procedural generator of the `reasoning-gym` package,
optionally with tools (the calculator, the python sandbox) attached per task.

    tasks = ReasoningGymEnv.tasks(64, seed=0, dataset="gsm_symbolic", tools=["calculator"])

Each task keeps its generator entry in `metadata["entry"]` so the dataset's own scorer can judge the
answer (rlvr.rewards.reasoning_gym). Entries hold tuples and dicts with integer keys that JSON would
silently turn into lists and string keys (breaking e.g. arc_agi's scorer), so they are stored with those
tagged (`encode_entry`) and restored exactly before scoring (`decode_entry`).

The package is imported lazily, so listing envs stays cheap; a missing package fails with the pip command.
"""

from __future__ import annotations

import importlib
import zlib
from typing import Any

from rlvr.core.contract import Task
from rlvr.envs.base import ToolEnv

INSTALL_HINT = "pip install reasoning-gym"

# tool name -> "module:Class" of the toolset it attaches (imported only when a task asks for it)
TOOLSETS = {
    "calculator": "rlvr.envs.calculator:Calculator",
    "python": "rlvr.envs.python:PythonSandbox",
}

_TUPLE, _ITEMS = "__tuple__", "__items__"  # tags of the entry encoding


def import_reasoning_gym() -> Any:
    """The reasoning_gym package; a missing package fails with the command that installs it."""
    try:
        return importlib.import_module("reasoning_gym")
    except ModuleNotFoundError as e:
        if e.name == "reasoning_gym":
            raise ModuleNotFoundError(f"the reasoning_gym env and reward need the reasoning-gym package: "
                                      f"{INSTALL_HINT}") from e
        raise


def make_toolset(name: str) -> Any:
    """A fresh toolset for a tool name of TOOLSETS."""
    if name not in TOOLSETS:
        raise ValueError(f"unknown reasoning_gym tool {name!r}; choose from {', '.join(TOOLSETS)}")
    module, _, cls = TOOLSETS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def encode_entry(value: Any) -> Any:
    """A generator entry as JSON values, with tuples and dicts whose keys are not all strings tagged."""
    if isinstance(value, tuple):
        return {_TUPLE: [encode_entry(v) for v in value]}
    if isinstance(value, list):
        return [encode_entry(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not {_TUPLE, _ITEMS} & value.keys():
            return {k: encode_entry(v) for k, v in value.items()}
        return {_ITEMS: [[encode_entry(k), encode_entry(v)] for k, v in value.items()]}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"reasoning-gym entry holds a {type(value).__name__} ({value!r}), which has no JSON form")


def decode_entry(value: Any) -> Any:
    """The inverse of `encode_entry`."""
    if isinstance(value, list):
        return [decode_entry(v) for v in value]
    if isinstance(value, dict):
        if value.keys() == {_TUPLE}:
            return tuple(decode_entry(v) for v in value[_TUPLE])
        if value.keys() == {_ITEMS}:
            return {decode_entry(k): decode_entry(v) for k, v in value[_ITEMS]}
        return {k: decode_entry(v) for k, v in value.items()}
    return value


def reasoning_gym_tasks(n: int, seed: int = 0, split: str = "train", dataset: str = "gsm_symbolic",
                        tools: list[str] | tuple[str, ...] = (), config: dict[str, Any] | None = None) -> list[Task]:
    """`n` tasks of a reasoning-gym dataset, deterministic in (dataset, split, seed); splits draw from
    different generator seeds. `config` holds the generator's own settings (e.g. difficulty ranges)."""
    rg = import_reasoning_gym()
    unknown = [t for t in tools if t not in TOOLSETS]
    if unknown:
        raise ValueError(f"unknown reasoning_gym tool(s) {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(TOOLSETS)}")
    from reasoning_gym.factory import DATASETS

    if dataset not in DATASETS:
        raise ValueError(f"unknown reasoning-gym dataset {dataset!r}; it has {len(DATASETS)}, e.g. "
                         f"{', '.join(sorted(DATASETS)[:8])}, ...")
    generator_seed = zlib.crc32(f"reasoning_gym/{dataset}/{split}/{seed}".encode())
    data = rg.create_dataset(dataset, **{**(config or {}), "size": n, "seed": generator_seed})
    tasks = []
    for i in range(n):
        entry = data[i]
        tasks.append(Task(
            id=f"reasoning_gym-{dataset}-{split}-{seed}-{i}", env="reasoning_gym", prompt=entry["question"],
            answer=entry["answer"], metadata={"dataset": dataset, "entry": encode_entry(entry), "tools": list(tools)},
        ))
    return tasks


class ReasoningGymEnv(ToolEnv):
    """A reasoning-gym problem, with the tools named in the task's `metadata["tools"]` (none: plain reasoning)."""

    name = "reasoning_gym"
    system_prompt = ("Solve the problem step by step. End with your final answer on its own line, "
                     "written as 'Answer: <answer>'.")
    rewards = {"reasoning_gym": 1.0, "format": 0.0}

    def toolsets(self) -> list[Any]:
        return [make_toolset(name) for name in self.task.metadata.get("tools", [])]

    @classmethod
    def tasks(cls, n: int, seed: int = 0, split: str = "train", dataset: str = "gsm_symbolic",
              tools: list[str] | tuple[str, ...] = (), config: dict[str, Any] | None = None) -> list[Task]:
        """`n` problems of a reasoning-gym dataset (see `reasoning_gym_tasks`)."""
        return reasoning_gym_tasks(n, seed, split, dataset, tools, config)
