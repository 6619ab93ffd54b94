"""The hand-offs of the RL loop, declared: what the loop, the rollout side and the learner call on each other.

Each has an in-process and a Ray implementation that the loop calls the same way:

    RolloutSource    rlvr.rollout.sources: EnvSource (env tasks, rolled out), SyntheticSource (random groups)
    RolloutBackend   rlvr.rollout.workers.LocalRollouts (one worker, in this process), rlvr.distributed.RayRollouts
    Engine           rlvr.rollout.continuous.ContinuousEngine, rlvr.rollout.engine.HFEngine, rlvr.rollout.vllm_engine.VLLMEngine
    Learner          rlvr.training.learner.Learner, rlvr.distributed.RemoteLearner

The data that crosses them is torch-free (the contract's Group and Batch, and the types below), except the
adapter, whose tensors go from the learner to the engines as they are.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from rlvr.core.config import RolloutConfig
from rlvr.core.contract import Batch, Group, Task

if TYPE_CHECKING:
    from rlvr.training.models import AdapterState  # holds torch tensors: named for type checkers only


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()  # stop strings, kept in the output (the stop tokens are always honoured)


@dataclass
class Completion:
    token_ids: list[int]  # sampled ids, ending with the stop token when finish_reason == "stop"
    logprobs: list[float]  # one per sampled id, under the sampling distribution
    finish_reason: Literal["stop", "length"]


@dataclass
class RolloutResult:
    groups: list[Group]  # groups left empty by a dropping reward (rewards.on_error=drop) are left out
    version: int  # the policy version that sampled them
    dropped: int  # trajectories dropped by a failing reward
    errors: list[str]  # why, one line each
    seconds: float  # wall time of the whole rollout
    score_s: float  # wall time with a reward running (overlaps generation)


class Engine(Protocol):
    """Token ids in, sampled ids and their log-probs (under the sampling distribution) out. An engine with a
    `max_context` attribute (positions) gets no prompt that fills it: the rollout raises first, naming the task."""

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion: ...

    async def set_adapter(self, adapter: AdapterState | None) -> None:
        """Serve this adapter from the next request on; None: the shared model's adapter changed in place."""


class Learner(Protocol):
    def step(self, batch: Batch) -> dict[str, float]:
        """One update on the batch (K inner epochs, micro-batched); returns learner/* metrics."""

    def adapter_state(self, version: int | None = None) -> AdapterState: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class RolloutBackend(Protocol):
    """Where rollouts run. `submit` returns at once; `collect` waits for what it sent."""

    restarts: int  # shards re-issued after a worker died

    def submit(self, tasks: list[Task], settings: RolloutConfig, seed: int | list[int], min_version: int) -> Any:
        """`seed`: one for all tasks, or one per task."""

    def collect(self, pending: Any) -> list[RolloutResult]: ...

    def sync(self, learner: Learner, version: int, *, wait: bool = True) -> None:
        """Every engine serves policy `version` from its next rollout on."""

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


class RolloutSource(Protocol):
    """The loop's source of scored groups, one batch per step."""

    def start(self, learner: Learner, version: int) -> None: ...

    def rollouts(self, step: int) -> tuple[list[Group], dict[str, float]]: ...

    def engines_asleep(self) -> AbstractContextManager: ...

    def sync(self, learner: Learner, version: int) -> None: ...

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out metrics by policy v{step}; asked only when eval.every > 0."""

    def close(self) -> None: ...
