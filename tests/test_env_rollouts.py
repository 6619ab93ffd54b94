"""Envs and rewards through the real agent loop: scripted model turns, token-exact transcripts, scoring
as trajectories finish, call anchors and credit, and a simulated user's next turns (BFCL multi-turn)."""

import asyncio
import json

import pytest

from rlvr.training.advantages import make_batch
from rlvr.rollout.chat import ChatRenderer
from rlvr.core.config import AlgorithmConfig, RolloutConfig
from rlvr.core.protocols import Completion
from rlvr.training.models import load_tokenizer
from rlvr.rewards.scoring import Scorer
from rlvr.rollout.agent import rollout_groups, trajectory_seed


class ScriptByTrajectory:
    """The model's turns, scripted per trajectory of the group (found from the sampling seed)."""

    def __init__(self, tokenizer, end_id, task_id, scripts, seed=0):
        self.tokenizer, self.end_id = tokenizer, end_id
        self.first_seed = {trajectory_seed(seed, task_id, i): i for i in range(len(scripts))}
        self.scripts = [list(s) for s in scripts]

    async def generate(self, prompt_ids, params):
        index = next(i for s, i in self.first_seed.items() if 0 <= params.seed - s < 64)
        ids = self.tokenizer.encode(self.scripts[index].pop(0), add_special_tokens=False) + [self.end_id]
        return Completion(ids, [-0.5] * len(ids), "stop")


def _call(name, arguments):
    return f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


@pytest.fixture(scope="module")
def renderer():
    return ChatRenderer(load_tokenizer("smollm2-135m-instruct"))


def test_support_desk_group_is_scored_as_it_finishes_with_anchored_call_credit(renderer):
    from rlvr.envs.support_desk import SupportDeskEnv

    task = next(t for t in SupportDeskEnv.tasks(10, seed=1) if t.metadata["scenario"] == "refund_broken_order")
    gold = [_call(g["name"], g["arguments"]) for g in task.gold_calls]
    refund = task.gold_calls[-1]
    assert refund["name"] == "refund_transaction"
    too_much = {**refund["arguments"], "amount": round(refund["arguments"]["amount"] * 2, 2)}
    wrong = [_call(task.gold_calls[0]["name"], task.gold_calls[0]["arguments"]), _call("refund_transaction", too_much)]
    [end_id] = renderer.turn_end_ids
    engine = ScriptByTrajectory(renderer.tokenizer, end_id, task.id, [gold + ["Refunded."], wrong + ["Done."]])
    settings = RolloutConfig(group_size=2, max_turns=10, strict_tokens=True, max_total_tokens=4096)
    scorer = Scorer.from_specs(SupportDeskEnv.rewards)
    [group] = asyncio.run(rollout_groups([task], engine, renderer, SupportDeskEnv, settings, scorer=scorer))

    good, bad = group.trajectories
    assert (good.reward, bad.reward) == (1.0, 0.0)
    # the doubled refund is the one refused call: one violation for the bad trajectory, none for the good one
    assert bad.reward_components["policy_compliance/violations"] == 1.0
    assert good.reward_components["policy_compliance/violations"] == 0.0
    assert good.reward_components["tool_call_validity"] == bad.reward_components["tool_call_validity"] == 1.0
    assert all(c.credit is not None and c.anchor for t in group.trajectories for c in t.tool_calls)
    assert "refused by policy" in bad.tool_calls[-1].result
    assert bad.tool_calls[-1].scores["progress"] == -1.0 and good.tool_calls[-1].scores["progress"] == 1.0
    # lookups leave the database as it was: both refunds were attempted from the initial state
    assert good.tool_calls[0].anchor == bad.tool_calls[0].anchor == good.tool_calls[-1].anchor == bad.tool_calls[-1].anchor
    batch, metrics = make_batch([group], AlgorithmConfig(credit="step_grouped"))
    assert metrics["credit/calls"] == len(good.tool_calls) + len(bad.tool_calls)
    outcome_good, outcome_bad = batch.advantages[0][-1], batch.advantages[1][-1]  # the final answer: no call
    assert batch.advantages[0][good.tool_calls[-1].span[0]] > outcome_good  # the right refund
    assert batch.advantages[1][bad.tool_calls[-1].span[0]] < outcome_bad  # the refused one


def test_bfcl_multi_turn_user_turns_are_appended_token_exactly_and_scored(renderer):
    from rlvr.envs.bfcl import BfclEnv, bfcl_tasks

    task = next(t for t in bfcl_tasks(20, split="all") if len(t.answer) == 2)
    script = []
    for turn in range(len(task.answer)):
        calls = [g for g in task.gold_calls if g["turn"] == turn]
        script += ["".join(_call(g["name"], g["arguments"]) for g in calls), f"Turn {turn} is done."]
    [end_id] = renderer.turn_end_ids
    engine = ScriptByTrajectory(renderer.tokenizer, end_id, task.id, [script])
    settings = RolloutConfig(group_size=1, max_turns=8, strict_tokens=True, max_total_tokens=32768)
    [group] = asyncio.run(rollout_groups([task], engine, renderer, BfclEnv, settings,
                                         scorer=Scorer.from_specs(BfclEnv.rewards)))
    [t] = group.trajectories
    assert t.finish_reason == "stop" and t.turns == 4 and t.metrics["token_drift_turns"] == 0
    user_turns = [m for m in t.messages if m["role"] == "user"]
    assert user_turns[1:] == [m for turn in task.metadata["turns"] for m in turn if m["role"] == "user"]
    assert t.reward == 1.0 and t.reward_components["bfcl"] == 1.0
    assert len(t.final_state["calls"]) == len(task.answer)
