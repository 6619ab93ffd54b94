"""The LLM-judge reward against an OpenAI-compatible endpoint on 127.0.0.1: assertions judged concurrently,
the share of YES, verdicts as components, and failures that go through rewards.on_error, never a 0."""

import asyncio
import time

import pytest

from rlvr.core.contract import Task, Trajectory
from rlvr.rewards.scoring import RewardError, Scorer
from chat_server import ChatServer


def _judge(body, number):
    """Says YES when the assertion's quoted word appears in the conversation; MAYBE for 'unsure'."""
    conversation, _, assertion = body["messages"][-1]["content"].partition("\n\nAssertion: ")
    word = assertion.split("'")[1] if "'" in assertion else ""
    return {"content": "MAYBE" if "unsure" in assertion else ("YES. It does." if word in conversation else "NO")}


@pytest.fixture
def judge():
    server = ChatServer(_judge, delay_s=0.2)
    yield server
    server.close()


def _trajectory():
    return Trajectory(id="t/0", task_id="t", group_id="t", prompt_ids=[1], completion_ids=[2], loss_mask=[1],
                      logprobs=[0.0], messages=[{"role": "system", "content": "hidden"},
                                                {"role": "user", "content": "Cancel my order please."},
                                                {"role": "assistant", "content": "Shall I cancel order 7? Please confirm."}])


def test_assertions_are_judged_concurrently_and_reported(judge, caplog):
    task = Task(id="t", env="support_desk", prompt="?", metadata={"assertions": [
        "The agent says 'confirm'", "The agent says 'refund'", "The agent names 'order 7'"]})
    scorer = Scorer.from_specs([("llm_judge", 1.0, {"url": judge.url, "model": "judge"})])
    start = time.perf_counter()
    with caplog.at_level("INFO", logger="rlvr.rewards.judge"):
        scored = asyncio.run(scorer.score(_trajectory(), task))
    assert time.perf_counter() - start < 0.5  # three 0.2 s verdicts side by side
    assert scored.reward == pytest.approx(2 / 3)
    assert {k: v for k, v in scored.reward_components.items() if k.startswith("llm_judge/")} == {
        "llm_judge/assertions": 3.0, "llm_judge/passed": 2.0, "llm_judge/a0": 1.0, "llm_judge/a1": 0.0,
        "llm_judge/a2": 1.0}
    sent = judge.requests[0]["messages"][-1]["content"]
    assert "USER: Cancel my order please." in sent and "hidden" not in sent
    assert sum("verdict=" in r.message for r in caplog.records) == 3


def test_a_rubric_option_and_errors_go_through_on_error(judge):
    task = Task(id="t", env="support_desk", prompt="?")
    rubric = Scorer.from_specs([("llm_judge", 1.0, {"url": judge.url, "model": "judge", "rubric": "Says 'Cancel'"})])
    assert asyncio.run(rubric.score(_trajectory(), task)).reward == 1.0
    unsure = Scorer.from_specs([("llm_judge", 1.0, {"url": judge.url, "model": "judge", "rubric": "unsure"})])
    with pytest.raises(RewardError, match="neither YES nor NO: 'MAYBE'"):
        asyncio.run(unsure.score(_trajectory(), task))
    nothing = Scorer.from_specs([("llm_judge", 1.0, {"url": judge.url, "model": "judge"})], on_error="drop")
    assert asyncio.run(nothing.score(_trajectory(), task)) is None and nothing.stats.dropped == 1
    assert "has no metadata['assertions']" in nothing.stats.errors[0]


def test_a_task_with_an_empty_assertion_list_passes(judge):
    task = Task(id="t", env="tau2", prompt="?", metadata={"assertions": []})
    scorer = Scorer.from_specs([("llm_judge", 1.0, {"url": judge.url, "model": "judge"})])
    assert asyncio.run(scorer.score(_trajectory(), task)).reward == 1.0 and judge.requests == []


def test_the_judge_can_be_the_local_chat_model_of_the_rollout_worker(tmp_path):
    from rlvr.core.config import load_config
    from rlvr.core.endpoint import serve_local_chat
    from rlvr.rollout.workers import RolloutWorker

    class Judge:  # the local model's place, answering as the endpoint judge above does
        async def chat(self, payload, task_id):
            return _judge(payload, 0)

    task = Task(id="t", env="support_desk", prompt="?", metadata={"assertions": [
        "The agent says 'confirm'", "The agent says 'refund'"]})
    scorer = Scorer.from_specs([("llm_judge", 1.0, {"url": "local", "model": ""})])
    with pytest.raises(RewardError, match="rollout.local_chat_model"):  # nothing served in this process
        asyncio.run(scorer.score(_trajectory(), task))
    serve_local_chat(Judge())
    try:
        assert asyncio.run(scorer.score(_trajectory(), task)).reward == 0.5
    finally:
        serve_local_chat(None)
    # a real one: the worker's random model answers neither YES nor NO, which raises rather than scoring 0
    cfg = load_config(None, ["model.name=tiny-random-llama", "rollout.local_chat_model=tiny-random-llama",
                             f"output_dir={tmp_path}"])
    worker = RolloutWorker(cfg)
    try:
        with pytest.raises(RewardError, match="neither YES nor NO"):
            worker.loop.run_until_complete(scorer.score(_trajectory(), task))
    finally:
        worker.close()
