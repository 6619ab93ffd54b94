"""Intervals for comparing policies evaluated on the same tasks (torch-free, no numpy needed)."""

from __future__ import annotations

import random


def paired_bootstrap(a: dict[str, float], b: dict[str, float], resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """The mean of b - a over the tasks both were scored on, with a `level` percentile interval from
    resampling those tasks with replacement (pairs stay together, so the task-to-task spread that both
    policies share cancels).

    a, b: {task id: score} (success 0/1, or the mean over a task's samples).
    Returns {"diff", "low", "high", "tasks"}."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("paired_bootstrap: the two policies share no task")
    diffs = [b[t] - a[t] for t in shared]
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2
    return {"diff": sum(diffs) / n, "low": means[int(tail * resamples)],
            "high": means[min(resamples - 1, int((1 - tail) * resamples))], "tasks": float(n)}


def hierarchical_bootstrap(runs: list[tuple[dict[str, float], dict[str, float]]], resamples: int = 10_000,
                           seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """`paired_bootstrap` across independent runs (training seeds), each with its own paired tasks: the mean
    over runs of each run's mean b - a, with a `level` percentile interval from resampling the runs with
    replacement and then, within each drawn run, its tasks. The interval holds the seed-to-seed spread as
    well as the task-to-task one; with few runs it is optimistic (3 runs give 10 distinct draws of runs).

    runs: [(a, b)] per run, each {task id: score} as in `paired_bootstrap`.
    Returns {"diff", "low", "high", "runs", "tasks"} (tasks: the paired tasks of all runs together)."""
    diffs = []
    for k, (a, b) in enumerate(runs):
        shared = sorted(set(a) & set(b))
        if not shared:
            raise ValueError(f"hierarchical_bootstrap: the two policies share no task in run {k}")
        diffs.append([b[t] - a[t] for t in shared])
    if not diffs:
        raise ValueError("hierarchical_bootstrap: no runs")
    rng = random.Random(seed)

    def resampled_mean() -> float:
        drawn = rng.choices(diffs, k=len(diffs))
        return sum(sum(rng.choices(d, k=len(d))) / len(d) for d in drawn) / len(drawn)

    means = sorted(resampled_mean() for _ in range(resamples))
    tail = (1.0 - level) / 2
    return {"diff": sum(sum(d) / len(d) for d in diffs) / len(diffs), "low": means[int(tail * resamples)],
            "high": means[min(resamples - 1, int((1 - tail) * resamples))], "runs": float(len(diffs)),
            "tasks": float(sum(map(len, diffs)))}


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% for z=1.96) of a success rate measured on `n` trials."""
    if n == 0:
        return 0.0, 1.0
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (rate * (1 - rate) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)
