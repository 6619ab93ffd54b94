"""Scoring trajectories: several rewards combined with weights, run concurrently, failures never silent.

    reward = sum_r w_r * total_r                 (combine="sum"; weight-0 rewards are logged metrics only)
    reward = prod_{r: w_r != 0} total_r ** w_r   (combine="product": parts that must all hold, as tau-bench
                                                  multiplies its checks; a 0/1 part is a gate)
    call credit c_k = mean(call checks_k) + progress_k + sum_r w_r * credit_{r,k}     (docs/credit.md)

Sync rewards run in a thread pool, async ones on the event loop; every reward of every trajectory runs
concurrently (bounded by `concurrency`) and under a timeout, so a trajectory is scored as soon as its
rollout ends while others are still generating. A reward that raises, times out or returns something
that is not a finite number is reported with the reward, task and trajectory; `on_error="raise"` stops
the run, `on_error="drop"` excludes the trajectory and counts it. It is never scored 0.

This module imports neither torch nor Ray.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

from rlvr.core.contract import Group, Task, ToolCallError, Trajectory
from rlvr.rewards.base import NOT_APPLICABLE, Score
from rlvr.rewards.calls import call_checks
from rlvr.rewards.registry import load_reward

log = logging.getLogger(__name__)

_REWARD_THREADS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="rlvr-reward")


class RewardError(RuntimeError):
    """A reward that could not score a trajectory; the message names the reward, task and trajectory."""


@dataclass(frozen=True)
class RewardTerm:
    name: str
    fn: Callable[..., Any]
    weight: float = 1.0
    is_async: bool = field(init=False)  # awaited on the event loop; else run in the reward threads

    def __post_init__(self):
        object.__setattr__(self, "is_async", _is_async(self.fn))


@dataclass
class ScoringStats:
    scored: int = 0
    dropped: int = 0
    errors: list[str] = field(default_factory=list)  # one line per dropped trajectory
    busy_s: float = 0.0  # wall time with at least one trajectory being scored (overlaps generation)


def weighted_sum(weights: list[float], totals: list[float]) -> float:
    return sum(w * t for w, t in zip(weights, totals))


def weighted_product(weights: list[float], totals: list[float]) -> float:
    """prod t ** w over the terms with w != 0; a negative part has no real power and is refused."""
    value = 1.0
    for w, t in zip(weights, totals):
        if w == 0:
            continue
        if t < 0:
            raise ValueError(f"combine=product needs rewards >= 0, got {t}")
        value *= 0.0 if t == 0 else t ** w
    return value


COMBINE: dict[str, Callable[[list[float], list[float]], float]] = {"sum": weighted_sum, "product": weighted_product}


class Scorer:
    """Scores trajectories with weighted reward terms; see the module docstring."""

    def __init__(self, terms: list[RewardTerm], *, on_error: Literal["raise", "drop"] = "raise",
                 timeout_s: float = 60.0, concurrency: int = 256, combine: str = "sum"):
        if not terms:
            raise ValueError("Scorer needs at least one reward")
        if not any(t.weight != 0 for t in terms):
            raise ValueError(f"every reward has weight 0 ({', '.join(t.name for t in terms)}): nothing to learn from")
        if on_error not in ("raise", "drop"):
            raise ValueError(f"on_error must be 'raise' or 'drop', got {on_error!r}")
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
        self.terms = terms
        self.combine = combine
        self.on_error = on_error
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._limits: dict[int, asyncio.Semaphore] = {}  # one per event loop: a semaphore binds to its loop
        self.stats = ScoringStats()
        self._in_flight, self._since = 0, 0.0

    @classmethod
    def from_specs(cls, specs: Mapping[str, float] | list[tuple[str, float, dict[str, Any]]], **kwargs) -> Scorer:
        """From {spec: weight} or [(spec, weight, options)]; options are bound as keyword arguments."""
        items = [(s, w, {}) for s, w in specs.items()] if isinstance(specs, Mapping) else specs
        # logged as reward/<name>: "path/to/file.py:solved" and "pkg.mod:solved" are named "solved"
        terms = [RewardTerm(spec.rpartition(":")[2], functools.partial(load_reward(spec), **options) if options
                            else load_reward(spec), float(weight)) for spec, weight, options in items]
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"two rewards share a name in {names}: each is logged as reward/<name>")
        return cls(terms, **kwargs)

    @classmethod
    def from_config(cls, rewards: Any, env: type, call_cost: float = 0.0) -> Scorer:
        """From a run's `rewards` config section; with no functions named, the env's own `rewards`.
        `call_cost` > 0 adds the `tool_calls` reward with weight -call_cost (env.conditions.call_cost)."""
        specs = [(f.name, f.weight, f.options) for f in rewards.functions]
        specs = specs or [(name, weight, {}) for name, weight in env.rewards.items()]
        if call_cost:
            specs.append(("tool_calls", -call_cost, {}))
        if call_cost and rewards.combine == "product":
            raise ValueError("env.conditions.call_cost subtracts a cost per call; rewards.combine=product multiplies "
                             "parts: use combine=sum, or make the cost a factor of your own reward")
        return cls.from_specs(specs, on_error=rewards.on_error, timeout_s=rewards.timeout_s,
                              concurrency=rewards.concurrency, combine=rewards.combine)

    async def score(self, trajectory: Trajectory, task: Task) -> Trajectory | None:
        """Sets reward, reward_components and per-call scores/credit; None when dropped (on_error=drop)."""
        self._busy(+1)
        try:
            return await self._score(trajectory, task)
        finally:
            self._busy(-1)

    def _busy(self, change: int) -> None:
        now = time.perf_counter()
        if self._in_flight:
            self.stats.busy_s += now - self._since
        self._in_flight += change
        self._since = now

    async def _score(self, trajectory: Trajectory, task: Task) -> Trajectory | None:
        results = await asyncio.gather(*(self._run(term, trajectory, task) for term in self.terms),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            if self.on_error == "raise" or not all(isinstance(f, RewardError) for f in failures):
                raise failures[0]
            self.stats.dropped += 1
            self.stats.errors += [str(f) for f in failures]
            for f in failures:
                log.warning("dropped: %s", f)
            return None
        trajectory.reward = COMBINE[self.combine]([t.weight for t in self.terms], [r.total for r in results])
        components: dict[str, float] = {}
        for term, score in zip(self.terms, results):
            components[term.name] = score.total
            if not score.applies:
                components[f"{term.name}/{NOT_APPLICABLE}"] = 1.0
            components.update({f"{term.name}/{part}": value for part, value in score.components.items()})
        trajectory.reward_components = components
        _set_call_credit(trajectory, self.terms, results)
        self.stats.scored += 1
        return trajectory

    async def score_group(self, group: Group) -> Group | None:
        """The group with its dropped trajectories removed; None when none is left."""
        kept = [t for t in await asyncio.gather(*(self.score(t, group.task) for t in group.trajectories)) if t]
        return group.model_copy(update={"trajectories": kept}) if kept else None

    async def _run(self, term: RewardTerm, trajectory: Trajectory, task: Task) -> Score:
        where = f"reward {term.name!r} on task {task.id!r}, trajectory {trajectory.id!r}"
        loop = asyncio.get_running_loop()
        if id(loop) not in self._limits:
            self._limits = {id(loop): asyncio.Semaphore(self.concurrency)}
        async with self._limits[id(loop)]:
            try:
                if term.is_async:
                    value = await asyncio.wait_for(term.fn(trajectory, task), self.timeout_s)
                else:
                    value = await asyncio.wait_for(
                        loop.run_in_executor(_REWARD_THREADS, term.fn, trajectory, task), self.timeout_s)
            except asyncio.TimeoutError:
                raise RewardError(f"{where}: timed out after {self.timeout_s:g} s") from None
            except Exception as e:
                raise RewardError(f"{where}: {type(e).__name__}: {e}") from e
        return _as_score(value, where, len(trajectory.tool_calls))


def _is_async(fn: Callable) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def _as_score(value: Any, where: str, num_calls: int) -> Score:
    score = value if isinstance(value, Score) else None
    if score is None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RewardError(f"{where}: returned {value!r}; a reward returns a float or a Score")
        score = Score(total=value)
    if not math.isfinite(score.total):
        raise RewardError(f"{where}: returned a non-finite total {score.total}")
    if score.calls is not None and len(score.calls) != num_calls:
        raise RewardError(f"{where}: gave credit for {len(score.calls)} calls, the trajectory has {num_calls}")
    return score


def _set_call_credit(trajectory: Trajectory, terms: list[RewardTerm], scores: list[Score]) -> None:
    """c_k = mean(checks) + progress + sum_r w_r * credit_{r,k}; each part is kept in call.scores. A call that
    failed transiently gets none: the env's draw, not the policy's choice, decided it (its tokens keep the
    outcome advantage alone)."""
    for k, (call, checks) in enumerate(zip(trajectory.tool_calls, call_checks(trajectory))):
        call.scores.update(checks)
        if call.error == ToolCallError.transient:
            continue
        credit = sum(checks.values()) / len(checks) + call.scores.get("progress", 0.0)
        for term, score in zip(terms, scores):
            if score.calls is not None and score.calls[k] is not None:
                call.scores[term.name] = float(score.calls[k])
                credit += term.weight * float(score.calls[k])
        call.credit = credit
