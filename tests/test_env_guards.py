"""Mistakes caught early: tool results that are data become JSON, stateful envs run a turn's calls in order,
and a prompt that does not fit the model's context stops `rlvr train` and `rlvr eval` before any model loads."""

import asyncio
import json
import threading
import time

import pytest

from rlvr.core.config import ConfigError, load_config
from rlvr.core.contract import Task, ToolCall
from rlvr.envs.base import ToolEnv, tool
from rlvr.envs.calculator import calculator_tasks


class _Inventory(ToolEnv):
    name = "inventory_test"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.items, self.running, self.overlaps = {"apples": 1}, 0, 0
        self.lock = threading.Lock()

    @tool
    def add(self, item: str) -> dict:
        """Add one item.

        Args:
            item: its name
        """
        with self.lock:
            self.running += 1
            self.overlaps += self.running > 1
        time.sleep(0.05)
        self.items[item] = self.items.get(item, 0) + 1
        with self.lock:
            self.running -= 1
        return {"item": item, "count": self.items[item], "note": "ünïcode"}

    def state_key(self) -> str:
        return json.dumps(self.items, sort_keys=True)


def _step(env_cls, n=3):
    env = env_cls(Task(id="t", env="inventory_test", prompt="?"))
    calls = [ToolCall(name="add", arguments={"item": "apples"}, raw="x") for _ in range(n)]
    asyncio.run(env.step(calls))
    return env, calls


def test_tool_results_that_are_data_become_json():
    _, [call] = _step(_Inventory, 1)
    assert json.loads(call.result) == {"item": "apples", "count": 2, "note": "ünïcode"}


def test_concurrent_by_default_sequential_for_envs_with_state():
    env, calls = _step(_Inventory)
    assert env.overlaps > 0 and len({c.anchor for c in calls}) == 1  # all anchored to the state before the step

    class Sequential(_Inventory):
        sequential_calls = True

    env, calls = _step(Sequential)
    assert env.overlaps == 0 and [json.loads(c.result)["count"] for c in calls] == [2, 3, 4]
    assert [json.loads(c.anchor)["apples"] for c in calls] == [1, 2, 3]  # each sees the previous call's state


def test_support_desk_runs_a_turns_calls_in_order():
    from rlvr.envs.support_desk.env import SupportDeskEnv

    assert SupportDeskEnv.sequential_calls and not ToolEnv.sequential_calls


def test_a_prompt_over_the_context_stops_train_and_eval_before_a_model_loads(tmp_path):
    from rlvr.loop import train
    from rlvr.stages.evaluate import evaluate_policy

    long = calculator_tasks(1)[0].model_copy(update={"id": "too-long", "prompt": "How many? " * 3000})
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(t.model_dump_json() for t in [*calculator_tasks(2), long]) + "\n")
    cfg = load_config(None, ["model.name=tiny-random-llama", "logging.wandb=disabled", f"output_dir={tmp_path}",
                             f"data.source={tasks}", "steps=1", "eval.every=0"])
    with pytest.raises(ConfigError, match=r"data.source: task too-long's opening prompt with its 1 tool schemas is "
                                          r"\d+ tokens; tiny-random-llama holds 4096 positions"):
        train(cfg)
    assert not list(tmp_path.glob("*/adapter"))
    with pytest.raises(ConfigError, match="eval: task too-long's opening prompt"):
        evaluate_policy(cfg, [long], adapter=None)


def test_a_rollout_worker_refuses_a_prompt_over_its_engines_context(tmp_path):
    """Where no driver check runs (Ray workers, other callers), the rollout raises before generating."""
    from rlvr.rollout.agent import PromptTooLongError
    from rlvr.rollout.workers import RolloutWorker

    long = calculator_tasks(1)[0].model_copy(update={"id": "too-long", "prompt": "How many? " * 3000})
    for engine in ("hf", "hf-generate"):
        cfg = load_config(None, ["model.name=tiny-random-llama", f"rollout.engine={engine}", f"output_dir={tmp_path}"])
        worker = RolloutWorker(cfg)
        try:
            assert worker.engine.max_context == 4096
            with pytest.raises(PromptTooLongError, match=r"task too-long: .* is \d+ tokens and the engine holds 4096"):
                worker.rollout([long], cfg.rollout, seed=0)
        finally:
            worker.close()


class _Shelf(ToolEnv):
    """A key-value shelf whose tasks say what to store; credit from the state the gold calls leave."""
    name = "shelf_test"
    gold_state_credit = True
    sequential_calls = True
    rewards = {"final_state": 1.0}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shelf = {"a": 1}

    @tool
    def put(self, key: str, value: int) -> str:
        """Store a value.

        Args:
            key: where
            value: what
        """
        self.shelf[key] = value
        return "ok"

    @tool
    def look(self, key: str) -> str:
        """Read a value.

        Args:
            key: where
        """
        return str(self.shelf.get(key))

    def final_state(self):
        return {"shelf": dict(self.shelf)}

    @classmethod
    def tasks(cls, n, seed=0, split="train"):
        return [Task(id=f"s{i}", env="shelf_test", prompt="Store b=2 and c=3.", gold_calls=[
            {"name": "put", "arguments": {"key": "b", "value": 2}}, {"name": "put", "arguments": {"key": "c", "value": 3}}])
            for i in range(n)]


def test_gold_state_credit_replays_the_gold_calls_and_scores_each_call_by_the_state_diff():
    from rlvr.core.tasks import env_tasks
    from rlvr.envs.base import state_distance
    from rlvr.envs.checker import check_env
    from rlvr.rewards.scoring import Scorer

    assert state_distance({"x": [{"id": 1, "v": 2}], "y": 1}, {"x": [{"id": 1, "v": 3}], "z": 1}) == 3
    assert state_distance({}, {"r": {"a": 1, "b": [2, 3]}}) == 3  # a missing subtree: all its leaves
    with pytest.raises(TypeError, match="gold_state_credit scores each call by the state it leaves"):
        type("Concurrent", (_Shelf,), {"sequential_calls": False})
    [task] = env_tasks(_Shelf, 1, 0, "train", {})
    assert task.expected_state == {"shelf": {"a": 1, "b": 2, "c": 3}}
    env = _Shelf(task)
    env.reset()
    calls = [ToolCall(name="put", arguments={"key": "b", "value": 2}, raw="x"),  # closer
             ToolCall(name="look", arguments={"key": "b"}, raw="x"),  # a read: no change
             ToolCall(name="put", arguments={"key": "a", "value": 9}, raw="x"),  # farther
             ToolCall(name="put", arguments={"key": "a", "value": 1}, raw="x")]  # closer again
    asyncio.run(env.step(calls))
    assert [c.scores["progress"] for c in calls] == [1.0, 0.0, -1.0, 1.0]
    report = asyncio.run(check_env(_Shelf, task=task, scorer=Scorer.from_specs(_Shelf.rewards)))
    assert "gold calls score a pass" in report.passed, report.violations
