"""Rollout scheduling: where the RL loop's scored groups come from, step by step.

`EnvSource` samples each step's tasks, sends them to a RolloutBackend (in-process workers or Ray actors),
keeps up to `ray.max_staleness` steps of rollouts in flight ahead of the learner, puts the engines to
sleep while the learner shares their GPU, and evaluates on held-out tasks. `SyntheticSource`
(data.source=synthetic) has random scored groups and no rollouts: the smoke run.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import Callable

from rlvr.core.config import Config, ConfigError
from rlvr.core.contract import Group, Task, Trajectory
from rlvr.core.protocols import Learner, RolloutBackend, RolloutResult
from rlvr.rewards.base import component_means
from rlvr.training.learner import resolve_device


class SyntheticSource:
    """data.source=synthetic: random scored groups and no rollouts (the smoke run, the learner benchmarks)."""

    def __init__(self, cfg: Config):
        if cfg.eval.every:
            raise ConfigError("eval.every: synthetic data has no held-out tasks to evaluate on")
        self.cfg = cfg

    def start(self, learner: Learner, version: int) -> None:
        from transformers import AutoConfig

        from rlvr.training.models import resolve_model

        self.vocab = AutoConfig.from_pretrained(resolve_model(self.cfg.model.name)).vocab_size

    def rollouts(self, step: int) -> tuple[list[Group], dict[str, float]]:
        from rlvr.training.synthetic import synthetic_groups

        data = self.cfg.data
        return synthetic_groups(data.tasks_per_step, self.cfg.rollout.group_size, data.synthetic_prompt_tokens,
                                data.synthetic_completion_tokens, self.vocab, seed=rollout_seed(self.cfg, step)), {}

    def engines_asleep(self):
        return nullcontext()

    def sync(self, learner: Learner, version: int) -> None:
        pass

    def close(self) -> None:
        pass


class EnvSource:
    """Tasks from an env's task source (or a file), rolled out by rollout workers (in-process: one, with the
    learner's own model under the HF engine; on Ray: `ray.rollout_workers` actors), each trajectory scored
    as it ends. With ray.max_staleness = s, the rollouts of the next s steps are sent before the learner
    trains on this one."""

    def __init__(self, cfg: Config, backend: Callable[[Learner], RolloutBackend]):
        """`backend` builds the workers once the learner exists (in-process they may share its model)."""
        from rlvr.core.plugins import PluginError
        from rlvr.core.tasks import TaskSampler, env_tasks, load_tasks
        from rlvr.rollout.chat import check_prompts_fit
        from rlvr.envs.registry import load_env
        from rlvr.rewards.scoring import Scorer

        try:
            self.env = load_env(cfg.env.name)
            Scorer.from_config(cfg.rewards, self.env, cfg.env.conditions.call_cost)  # fail now, not in a worker
            no_tool, rl_no_tool = cfg.env.conditions.no_tool_fraction, cfg.data.no_tool_fraction
            if cfg.data.source != "env" and (cfg.data.options or rl_no_tool is not None):
                raise ValueError(f"data.options and data.no_tool_fraction shape the env's own training tasks; "
                                 f"data.source is {cfg.data.source!r}")
            tasks = load_tasks(cfg.data.source, self.env, cfg.data.train_tasks, cfg.seed, "train",
                               {**cfg.env.options, **cfg.data.options},
                               no_tool_fraction=no_tool if rl_no_tool is None else rl_no_tool, columns=cfg.data.columns)
            self.held_out = (env_tasks(self.env, cfg.eval.tasks, cfg.seed, "test", cfg.env.options, no_tool)
                             if cfg.eval.every else [])
        except (PluginError, ValueError, TypeError, NotImplementedError) as e:
            raise ConfigError(str(e)) from None
        if not cfg.ray.enabled:  # in-process envs are built here anyway; on Ray only the workers build them
            check_prompts_fit(cfg, self.env, tasks, "data.source")
            check_prompts_fit(cfg, self.env, self.held_out, "eval")
        self.sampler = TaskSampler(tasks, cfg.data.tasks_per_step, cfg.seed)
        self.sleep = _engines_share_the_learner_gpu(cfg)
        if self.sleep and cfg.ray.max_staleness:
            raise ConfigError("ray.max_staleness: the engines and the learner share one GPU, so rollouts cannot "
                              "overlap learner steps; use 0")
        self.cfg = cfg
        self.make_backend = backend
        self.backend: RolloutBackend | None = None
        self.pending = {}  # step -> rollouts sent ahead (max_staleness > 0)

    def start(self, learner: Learner, version: int) -> None:
        self.backend = self.make_backend(learner)
        self.backend.sync(learner, version, wait=True)

    def _submit(self, step: int):
        return self.backend.submit(self.sampler.batch(step), self.cfg.rollout, rollout_seed(self.cfg, step),
                                   min_version=step - 1 - self.cfg.ray.max_staleness)

    def rollouts(self, step: int) -> tuple[list[Group], dict[str, float]]:
        pending = self.pending.pop(step, None) or self._submit(step)
        for ahead in range(step + 1, min(step + self.cfg.ray.max_staleness, self.cfg.steps) + 1):
            if ahead not in self.pending:
                self.pending[ahead] = self._submit(ahead)
        results = self.backend.collect(pending)
        groups = [g for r in results for g in r.groups]
        if not groups:
            errors = [e for r in results for e in r.errors]
            raise RuntimeError(f"step {step}: every trajectory was dropped by a failing reward "
                               f"({errors[-1] if errors else 'no error recorded'})")
        metrics = {}
        if self.cfg.algorithm.filter_zero_variance:  # DAPO dynamic sampling
            groups, results, metrics = self._refill(step, groups, results)
        return groups, _rollout_metrics(step, results, self.backend.restarts) | metrics

    def _refill(self, step: int, groups, results):
        """Roll out extra batches of tasks (at most `algorithm.refill_rounds`) until the step holds
        `data.tasks_per_step` groups that carry signal; keep that many of them, and the flat groups, which
        make_batch counts and drops.

        Rounds go out together, as many as the step's share of groups with signal so far says are still
        needed (a Laplace estimate, so a step with none yet asks for several): their rows share the engines'
        batches, which on a GPU costs less than rounds one after another (on a small CPU it is no faster:
        docs/algorithms.md). Each round keeps its own tasks and seed; in process the groups come back in task
        order, so the ones kept are those rounds one by one would keep."""
        from rlvr.training.advantages import carries_signal

        want, limit, rounds = self.cfg.data.tasks_per_step, self.cfg.algorithm.refill_rounds, 0
        signal = [carries_signal(g, self.cfg.algorithm) for g in groups]
        while (have := sum(signal)) < want and rounds < limit:
            rate = (have + 1) / (len(signal) + 2)
            batch = range(rounds + 1, rounds + 1 + min(limit - rounds, math.ceil((want - have) / (rate * want))))
            tasks, seeds = self.refill_tasks(step, batch)
            more = self.backend.collect(self.backend.submit(tasks, self.cfg.rollout, seeds,
                                                            min_version=step - 1 - self.cfg.ray.max_staleness))
            rounds = batch[-1]
            results = results + more
            new = [g for r in more for g in r.groups]
            groups, signal = groups + new, signal + [carries_signal(g, self.cfg.algorithm) for g in new]
        kept, with_signal = [], 0
        for group, has in zip(groups, signal):
            if has:
                with_signal += 1
                if with_signal > want:
                    continue
            kept.append(group)
        return kept, results, {"batch/refill_rounds": float(rounds), "batch/signal_groups": float(min(with_signal, want)),
                               "batch/rolled_out_groups": float(len(groups))}

    def refill_tasks(self, step: int, rounds) -> tuple[list[Task], list[int]]:
        """The tasks of step `step`'s refill `rounds` (numbers >= 1), in round order, with each one's round seed."""
        tasks = [(task, rollout_seed(self.cfg, step, r)) for r in rounds for task in self.sampler.extra(step, r)]
        return [t for t, _ in tasks], [s for _, s in tasks]

    def engines_asleep(self):
        return self._asleep() if self.sleep else nullcontext()

    @contextmanager
    def _asleep(self):
        self.backend.sleep()
        try:
            yield
        finally:
            self.backend.wake_up()

    def sync(self, learner: Learner, version: int) -> None:
        self.backend.sync(learner, version, wait=not self.cfg.ray.max_staleness)

    def evaluate(self, step: int) -> dict[str, float]:
        """One greedy trajectory per held-out task by policy v{step}: eval/mean and every reward component."""
        greedy = self.cfg.rollout.model_copy(update={"group_size": 1, "temperature": 0.0})
        results = self.backend.collect(self.backend.submit(self.held_out, greedy, self.cfg.seed, min_version=step))
        groups = [g for r in results for g in r.groups]
        trajectories = [t for g in groups for t in g.trajectories]
        return {**_reward_means(trajectories, "eval"), "eval/tasks": float(len(groups))}

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def rollout_seed(cfg: Config, step: int, round: int = 0) -> int:
    """The seed of step `step`'s rollouts (round 0) or of its refill round `round`: not another step's or round's."""
    return cfg.seed * 1_000_003 + step + 7_919 * round


def _engines_share_the_learner_gpu(cfg: Config) -> bool:
    """vLLM engines sleep during learner steps when they and the learner share one GPU."""
    if cfg.rollout.engine != "vllm":
        return False
    if not cfg.ray.enabled:
        return resolve_device(cfg.learner.device).type == "cuda"
    r = cfg.ray
    return r.learner_gpus > 0 and r.worker_gpus > 0 and r.learner_gpus + r.worker_gpus * r.rollout_workers <= 1


def _rollout_metrics(step: int, results: list[RolloutResult], reissued: int) -> dict[str, float]:
    trajectories = [t for r in results for g in r.groups for t in g.trajectories]
    sampled = sum(t.num_sampled_tokens for t in trajectories)
    seconds = max(r.seconds for r in results)  # the workers run side by side
    calls = [c for t in trajectories for c in t.tool_calls]
    lags = [step - 1 - t.policy_version for t in trajectories]  # versions behind the policy of step `step`
    n = len(trajectories)
    return {"rollout/sampled_tokens": float(sampled),
            "rollout/tokens_per_s": sampled / seconds if seconds else 0.0,
            "rollout/turns": sum(t.turns for t in trajectories) / n,
            "rollout/tool_calls": len(calls) / n,
            "rollout/tool_errors": sum(c.error is not None for c in calls) / max(len(calls), 1),
            "rollout/finished": sum(t.finish_reason == "stop" for t in trajectories) / n,
            "rollout/staleness_mean": sum(lags) / n, "rollout/staleness_max": float(max(lags)),
            "rollout/reissued_shards": float(reissued),
            "reward/dropped_trajectories": float(sum(r.dropped for r in results)),
            "time/score_s": max(r.score_s for r in results),
            **_reward_means(trajectories, "reward")}


def _reward_means(trajectories: list[Trajectory], prefix: str) -> dict[str, float]:
    """<prefix>/mean of the rewards and <prefix>/<name> of every reward component (rewards/base.py)."""
    means = component_means([t.reward_components for t in trajectories])
    return {f"{prefix}/mean": sum(t.reward for t in trajectories) / len(trajectories),
            **{f"{prefix}/{name}": value for name, value in means.items()}}
