"""Bring your own tools and reward: a unit-conversion agent, from a plain Python function to an env.

Walkthrough in docs/byo.md. Run with `env.name=examples.units:UnitsEnv` from the repository root (or put
this module anywhere on your PYTHONPATH).
"""

from __future__ import annotations

import random

from rlvr.core.contract import Task, Trajectory
from rlvr.envs.base import ToolEnv, tool

FACTORS = {"m": 1.0, "km": 1000.0, "cm": 0.01, "mile": 1609.344, "ft": 0.3048, "inch": 0.0254}


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """The function we start from: any Python code the agent should learn to call."""
    for unit in (from_unit, to_unit):
        if unit not in FACTORS:
            raise ValueError(f"unknown unit {unit!r}; known: {', '.join(FACTORS)}")
    return value * FACTORS[from_unit] / FACTORS[to_unit]


class UnitsEnv(ToolEnv):
    """Convert lengths between units; success = the final answer is the right number (1% tolerance)."""

    name = "units"
    system_prompt = "Answer with the converted number. Use the convert tool; do not convert in your head."
    rewards = {"examples.units:close_answer": 1.0, "tool_call_validity": 0.0}

    @tool
    def convert(self, value: float, from_unit: str, to_unit: str) -> str:
        """Convert a length from one unit to another.

        Args:
            value: the length to convert
            from_unit: its unit, one of m, km, cm, mile, ft, inch
            to_unit: the unit wanted, one of m, km, cm, mile, ft, inch
        """
        return f"{convert(value, from_unit, to_unit):.6g}"  # a raised ValueError becomes the tool's answer

    @classmethod
    def tasks(cls, n: int, seed: int = 0, split: str = "train") -> list[Task]:
        rng = random.Random(f"units-{split}-{seed}")
        tasks = []
        for i in range(n):
            value, (a, b) = rng.randint(2, 5000), rng.sample(sorted(FACTORS), 2)
            tasks.append(Task(id=f"units-{split}-{seed}-{i}", env="units", prompt=f"How many {b} is {value} {a}?",
                              answer=convert(value, a, b),
                              gold_calls=[{"name": "convert", "arguments": {"value": value, "from_unit": a,
                                                                           "to_unit": b}}]))
        return tasks


def close_answer(trajectory: Trajectory, task: Task, rel_tol: float = 0.01) -> float:
    """The reward: any (trajectory, task) -> float function. 1.0 when the last number is within 1%."""
    from rlvr.rewards.answer import extract_number

    value = extract_number(trajectory.final_answer)
    return float(value is not None and abs(value - task.answer) <= rel_tol * abs(task.answer))
