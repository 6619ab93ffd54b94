"""Ray at the edges: the cluster, the learner actor, the rollout actors, adapter sync through the object
store, and re-issuing the tasks of a worker that died.

Everything here wraps classes that also run in-process (Learner, RolloutWorker); the loop calls both the
same way, so `ray.enabled=false` runs the identical step in one process, under a debugger.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import ray
from rich.console import Console

from rlvr.core.config import Config, RayConfig, RolloutConfig
from rlvr.core.contract import Task, Trajectory
from rlvr.training.learner import build_learner
from rlvr.training.models import AdapterState
from rlvr.core.protocols import RolloutResult
from rlvr.rollout.agent import per_task_seeds
from rlvr.rollout.workers import RolloutWorker

MAX_REISSUES = 3  # per shard and step: a worker that dies this often on the same tasks is a bug, not bad luck
console = Console(stderr=True)


def start_ray(cfg: RayConfig, rollout_workers: int) -> Callable[[], None]:
    """Connect to Ray; returns what undoes it (ray.shutdown, or nothing when Ray was already running).

    address "" starts a local Ray bound to 127.0.0.1 whose workers import what this process imports (its
    sys.path: env and reward plugins included); "auto" or an address joins a running cluster, where plugins
    must come with the job (`ray job submit --working-dir`, launch/submit.sh).
    """
    if ray.is_initialized():
        return lambda: None
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
    else:
        # Ray's single-machine mode (its default on macOS): the node's address is 127.0.0.1 and every
        # server binds there, not on the machine's external address; read by Ray here and in its children
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
        # logical CPUs: one per actor even on a 2-core machine, so the actors never wait for each other
        ray.init(address="local", include_dashboard=False,
                 num_cpus=max(os.cpu_count() or 1, rollout_workers + 1),
                 runtime_env={"env_vars": {
                     "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
                     # Ray limits an actor's torch to its num_cpus (1) threads; on-policy the learner and the
                     # workers take turns, so each may use every core
                     "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}})
    return ray.shutdown


def _wait_until_alive(actor, timeout_s: float = 600.0) -> None:
    """Wait while Ray restarts `actor` (its constructor loads a model again)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(actor.ping.remote())
            return
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class _LearnerHost:
    """The learner inside its actor; the methods are the ones the loop calls."""

    def __init__(self, cfg: Config, demonstrations: list[Trajectory] | None = None):
        self.learner = build_learner(cfg, demonstrations)

    def step(self, batch) -> dict[str, float]:
        return self.learner.step(batch)

    def adapter_state(self, version: int | None = None) -> AdapterState:
        return self.learner.adapter_state(version)

    def state_dict(self) -> dict:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)


class RemoteLearner:
    """The learner actor (on a GPU when ray.learner_gpus > 0), called like a Learner: each call waits."""

    def __init__(self, cfg: Config, demonstrations: list[Trajectory] | None = None):
        host = ray.remote(_LearnerHost).options(num_cpus=1, num_gpus=cfg.ray.learner_gpus)
        self.actor = host.remote(cfg, demonstrations)

    def step(self, batch) -> dict[str, float]:
        return ray.get(self.actor.step.remote(batch))

    def adapter_state(self, version: int | None = None) -> AdapterState:
        return ray.get(self.actor.adapter_state.remote(version))

    def state_dict(self) -> dict:
        return ray.get(self.actor.state_dict.remote())

    def load_state_dict(self, state: dict) -> None:
        ray.get(self.actor.load_state_dict.remote(state))

    def close(self) -> None:
        ray.kill(self.actor)


@dataclass
class Shard:
    worker: int
    tasks: list[Task]
    seeds: list[int]
    ref: ray.ObjectRef | None = None


@dataclass
class Pending:
    """Rollouts in flight: the shards, and what they need to be re-issued."""

    shards: list[Shard]
    settings: RolloutConfig
    min_version: int  # the oldest policy allowed to have sampled them


class RayRollouts:
    """`ray.rollout_workers` RolloutWorker actors; a step's tasks are dealt round-robin between them.

    A worker that dies is restarted by Ray (max_restarts=-1); its shard is re-issued with the same seeds,
    after the restarted worker has been sent the newest adapter. A result sampled by a policy older than
    allowed (a worker that came back with the initial policy before the driver noticed) is re-issued too.
    """

    def __init__(self, cfg: Config):
        actor = ray.remote(RolloutWorker).options(num_cpus=1, num_gpus=cfg.ray.worker_gpus, max_restarts=-1)
        self.workers = [actor.remote(cfg) for _ in range(cfg.ray.rollout_workers)]
        ray.get([w.ping.remote() for w in self.workers])  # a worker that cannot start fails the run here
        self.adapter: tuple[ray.ObjectRef, int] | None = None  # the newest policy: its AdapterState and version
        self.restarts = 0

    def submit(self, tasks: list[Task], settings: RolloutConfig, seed: int | list[int], min_version: int) -> Pending:
        n, seeds = len(self.workers), per_task_seeds(tasks, seed)
        shards = [Shard(i, tasks[i::n], seeds[i::n]) for i in range(n)]
        shards = [s for s in shards if s.tasks]
        for s in shards:
            s.ref = self.workers[s.worker].rollout.remote(s.tasks, settings, s.seeds)
        return Pending(shards, settings, min_version)

    def collect(self, pending: Pending) -> list[RolloutResult]:
        results = []
        for shard in pending.shards:
            for attempt in range(MAX_REISSUES + 1):
                try:
                    result = ray.get(shard.ref)
                    if result.version >= pending.min_version:
                        break
                    reason = f"it answered with policy v{result.version}, older than the v{pending.min_version} allowed"
                except ray.exceptions.RayActorError as e:
                    reason = f"it died: {str(e).strip().splitlines()[0]}"
                ids = ", ".join(t.id for t in shard.tasks)
                if attempt == MAX_REISSUES:
                    raise RuntimeError(f"rollout worker {shard.worker}: gave up on tasks [{ids}] after "
                                       f"{MAX_REISSUES} re-issues; last time {reason}")
                console.print(f"rollout worker {shard.worker}: {reason}; re-issuing tasks [{ids}]", markup=False)
                self.restarts += 1
                worker = self.workers[shard.worker]
                _wait_until_alive(worker)
                if self.adapter is not None:  # a restarted worker starts from the initial policy
                    ray.get(worker.set_adapter.remote(*self.adapter))
                shard.ref = worker.rollout.remote(shard.tasks, pending.settings, shard.seeds)
            results.append(result)
        return results

    def sync(self, learner: RemoteLearner, version: int, *, wait: bool) -> None:
        """Every worker serves policy `version` from its next call on: the adapter goes from the learner actor
        to the object store once and from there to each worker (the driver never holds it). Without `wait`
        the call returns at once; each worker runs it after the rollouts already sent to it."""
        self.adapter = (learner.actor.adapter_state.remote(version), version)
        refs = [w.set_adapter.remote(*self.adapter) for w in self.workers]
        if wait:
            for ref in refs:
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError:
                    pass  # the worker died: its next result is older than allowed and collect re-syncs it

    def sleep(self) -> None:
        ray.get([w.sleep.remote() for w in self.workers])

    def wake_up(self) -> None:
        ray.get([w.wake_up.remote() for w in self.workers])

    def close(self) -> None:
        for w in self.workers:
            ray.kill(w)
