"""A rollout worker: an engine, the env and the rewards, turning tasks into groups of scored trajectories.

In-process (ray.enabled=false) the loop holds one that samples with the learner's own model (HF) or its
own vLLM engine; on Ray every rollout actor is one of these (rlvr/distributed.py), with its own copy of
the model. Either way it serves the adapter versions the learner sends it, and every trajectory records
the version that sampled it.
"""

from __future__ import annotations

import asyncio
import time

from rlvr.core.config import Config, RolloutConfig
from rlvr.core.contract import Task
from rlvr.core.protocols import RolloutResult
from rlvr.training.models import AdapterState


class RolloutWorker:
    def __init__(self, cfg: Config, model=None):
        """`model`: the learner's own PEFT model to sample with (in-process HF); None loads a copy."""
        from rlvr.envs.conditions import with_transient_failures
        from rlvr.rollout.chat import ChatRenderer
        from rlvr.envs.registry import load_env
        from rlvr.training.models import load_tokenizer
        from rlvr.rewards.scoring import Scorer

        self.cfg = cfg
        self.env = load_env(cfg.env.name)
        conditions = cfg.env.conditions
        self.make_env = with_transient_failures(self.env, conditions.failure_rate)
        self.scorer = Scorer.from_config(cfg.rewards, self.env, call_cost=conditions.call_cost)
        self.renderer = ChatRenderer(load_tokenizer(cfg.model.name), cfg.rollout.tool_format)
        self.loop = asyncio.new_event_loop()  # one loop for the engine's life: vLLM binds to the first
        self.shares_model = model is not None
        self.engine = self._make_engine(model)
        self.chat_engine = self._serve_local_chat()
        self.version = 0  # the initial policy: the fresh adapter (a no-op) or model.init_adapter

    def _make_engine(self, model):
        from rlvr.training.models import add_lora

        cfg = self.cfg
        stop_ids = self.renderer.turn_end_ids
        if cfg.rollout.engine == "vllm":
            from rlvr.rollout.vllm_engine import VLLMEngine

            engine = VLLMEngine(cfg.model.name, stop_ids=stop_ids, max_lora_rank=cfg.model.lora.rank, seed=cfg.seed,
                                enable_sleep_mode=True).start()
            if cfg.model.init_adapter:
                self.loop.run_until_complete(engine.set_adapter(AdapterState.load(cfg.model.init_adapter)))
            return engine
        if model is None:
            model = add_lora(_engine_model(cfg.model.name), cfg.model.lora, cfg.model.init_adapter)
        return self._hf_engine(model, self.renderer.tokenizer, stop_ids)

    def _hf_engine(self, model, tokenizer, stop_ids: set[int]):
        """Continuous batching (rollout.engine hf, on the models it covers), else transformers' generate."""
        from rlvr.rollout.continuous import ContinuousEngine, unsupported
        from rlvr.rollout.engine import HFEngine

        if self.cfg.rollout.engine == "hf" and unsupported(model.config) is None:
            return ContinuousEngine(model, tokenizer, stop_ids=stop_ids)
        return HFEngine(model, tokenizer, stop_ids=stop_ids)

    def _serve_local_chat(self):
        """The engine of `rollout.local_chat_model`, published for users and judges (rlvr/rollout/local_chat.py);
        an HF engine whatever rollout.engine says for the policy."""
        name = self.cfg.rollout.local_chat_model
        if not name:
            return None
        from rlvr.core.endpoint import serve_local_chat
        from rlvr.rollout.chat import ChatRenderer
        from rlvr.rollout.local_chat import EngineChat
        from rlvr.training.models import load_tokenizer

        tokenizer = load_tokenizer(name)
        engine = self._hf_engine(_engine_model(name), tokenizer, ChatRenderer(tokenizer).turn_end_ids)
        serve_local_chat(EngineChat(engine, tokenizer))
        return engine

    def ping(self) -> int:
        return self.version

    def set_adapter(self, adapter: AdapterState | None, version: int) -> int:
        """Serve policy `version`. `adapter` may be None only when the engine shares the learner's model
        (whose adapter the learner has just updated in place)."""
        self.loop.run_until_complete(self.engine.set_adapter(adapter))
        self.version = version
        return version

    def rollout(self, tasks: list[Task], settings: RolloutConfig, seed: int | list[int]) -> RolloutResult:
        from rlvr.rollout.agent import rollout_groups

        stats = self.scorer.stats
        dropped, errors, busy, start = stats.dropped, len(stats.errors), stats.busy_s, time.perf_counter()
        groups = self.loop.run_until_complete(rollout_groups(
            tasks, self.engine, self.renderer, self.make_env, settings, seed=seed, policy_version=self.version,
            scorer=self.scorer))
        return RolloutResult(groups, self.version, stats.dropped - dropped, stats.errors[errors:],
                             time.perf_counter() - start, stats.busy_s - busy)

    def sleep(self) -> None:
        """Free the GPU for the learner (vLLM's sleep mode: weights offloaded, KV cache dropped)."""
        self.loop.run_until_complete(self.engine.sleep())

    def wake_up(self) -> None:
        self.loop.run_until_complete(self.engine.wake_up())

    def close(self) -> None:
        if hasattr(self.engine, "shutdown"):
            self.engine.shutdown()
        if self.chat_engine is not None:
            from rlvr.core.endpoint import serve_local_chat

            serve_local_chat(None)
        self.loop.run_until_complete(_cancel_pending())  # the HF engine's batcher, vLLM's output handler
        self.loop.close()


def _engine_model(name: str):
    """A frozen base model for an HF engine: bf16 where the device supports it."""
    from rlvr.training.learner import resolve_device
    from rlvr.training.models import auto_dtype, load_model

    device = resolve_device("auto")
    return load_model(name, dtype=auto_dtype(device), device=device)


async def _cancel_pending() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class LocalRollouts:
    """In-process rollouts: one RolloutWorker, run when the loop collects them (always on-policy)."""

    restarts = 0

    def __init__(self, worker: RolloutWorker):
        self.worker = worker

    def submit(self, tasks: list[Task], settings: RolloutConfig, seed: int | list[int], min_version: int):
        return tasks, settings, seed

    def collect(self, pending) -> list[RolloutResult]:
        return [self.worker.rollout(*pending)]

    def sync(self, learner, version: int, *, wait: bool = True) -> None:
        self.worker.set_adapter(None if self.worker.shares_model else learner.adapter_state(version), version)

    def sleep(self) -> None:
        self.worker.sleep()

    def wake_up(self) -> None:
        self.worker.wake_up()

    def close(self) -> None:
        self.worker.close()
