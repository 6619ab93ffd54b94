"""Per-call credit: the call scores the scorer computes and the token advantages of each credit mode,
hand-computed (docs/credit.md)."""

import asyncio
import math

import pytest

from rlvr.training.advantages import make_batch
from rlvr.core.config import AlgorithmConfig
from rlvr.core.contract import Group, Task, ToolCall, ToolCallError, Trajectory
from rlvr.rewards.base import Score
from rlvr.rewards.scoring import RewardTerm, Scorer

TASK = Task(id="g", env="e", prompt="p", answer=1)


def _traj(i, reward, calls, n=8):
    return Trajectory(id=f"g/{i}", task_id="g", group_id="g", prompt_ids=[1], completion_ids=[7] * n,
                      loss_mask=[1] * n, logprobs=[0.0] * n, reward=reward, tool_calls=calls)


def _group():
    # a2 failed to parse but has a span: it still gets (low) credit on its tokens
    a = [ToolCall(name="f", span=(0, 2), anchor="s0", credit=1.0),
         ToolCall(raw="<tool_call>{oops", error=ToolCallError.parse, span=(3, 5), anchor="s1", credit=0.0)]
    b = [ToolCall(name="f", span=(0, 2), anchor="s0", credit=0.0), ToolCall(name="g", span=(4, 6), anchor="s2", credit=1.0)]
    return Group(id="g", task=TASK, trajectories=[_traj(0, 1.0, a), _traj(1, 0.0, b)])


def _advantages(mode, weight=0.5):
    batch, _ = make_batch([_group()], AlgorithmConfig(advantage="dr_grpo", credit=mode, credit_weight=weight))
    return batch.advantages


def test_credit_none_is_the_outcome_advantage_everywhere():
    assert _advantages("none") == [[0.5] * 8, [-0.5] * 8]


def test_credit_is_off_by_default():
    batch, _ = make_batch([_group()], AlgorithmConfig(advantage="dr_grpo"))
    assert AlgorithmConfig().credit == "none" and batch.advantages == [[0.5] * 8, [-0.5] * 8]


def test_per_call_credit_is_centred_over_the_groups_calls_in_dr_grpo_units():
    # credits [1, 0, 0, 1]: mean 0.5; dr_grpo's scale is the reward's own: A_call = +-0.5, times w = 0.5
    up = 0.5 * 0.5
    a, b = _advantages("per_call")
    assert a == pytest.approx([0.5 + up] * 2 + [0.5] + [0.5 - up] * 2 + [0.5] * 3)
    assert b == pytest.approx([-0.5 - up] * 2 + [-0.5] * 2 + [-0.5 + up] * 2 + [-0.5] * 2)


def test_step_grouped_credit_compares_calls_made_from_the_same_state():
    # only the two calls from state s0 are comparable: credits [1, 0] -> +-0.5; s1, s2 are alone -> 0
    up = 0.5 * 0.5
    a, b = _advantages("step_grouped")
    assert a == pytest.approx([0.5 + up] * 2 + [0.5] * 6)
    assert b == pytest.approx([-0.5 - up] * 2 + [-0.5] * 6)


def test_same_anchor_in_different_groups_is_not_compared():
    g1, g2 = _group(), _group()
    g2 = Group(id="h", task=TASK.model_copy(update={"id": "h"}),
               trajectories=[t.model_copy(update={"group_id": "h", "task_id": "h", "id": f"h/{i}"})
                             for i, t in enumerate(g2.trajectories)])
    g2.trajectories[1].tool_calls[0].credit = 1.0  # group h: both s0 calls score 1 -> no signal there
    batch, metrics = make_batch([g1, g2], AlgorithmConfig(advantage="dr_grpo", credit="step_grouped", credit_weight=0.5))
    assert batch.advantages[2][:2] == pytest.approx([0.5] * 2) and batch.advantages[3][:2] == pytest.approx([-0.5] * 2)
    assert metrics["credit/calls"] == 8


def _ten_calls(advantage):
    """Ten trajectories with one call each: nine score 1.0, one repeats an earlier call (novel fails: 0.8)."""
    trajectories = [_traj(i, float(i % 2), [ToolCall(name="f", span=(0, 2), credit=0.8 if i == 9 else 1.0)])
                    for i in range(10)]
    batch, _ = make_batch([Group(id="g", task=TASK, trajectories=trajectories)],
                          AlgorithmConfig(advantage=advantage, credit="per_call", credit_weight=1.0))
    return [a[0] - a[2] for a in batch.advantages]  # the call term: call token minus an outcome-only token


def test_grpo_call_term_does_not_blow_up_on_near_identical_calls():
    # mean 0.98, std (n-1) sqrt(0.036 / 9) = 0.063: a plain std would give -0.18 / 0.063 = -2.85 (docs/credit.md)
    terms = _ten_calls("grpo")
    assert terms[9] == pytest.approx(-0.18 / 0.5) and terms[0] == pytest.approx(0.02 / 0.5)
    assert terms[9] > -0.5


def test_grpo_call_term_keeps_std_normalisation_when_calls_really_differ():
    batch, _ = make_batch([_group()], AlgorithmConfig(advantage="grpo", credit="per_call", credit_weight=1.0))
    # outcome [1, 0] -> +-1/sqrt(1/2) (+eps); credits [1, 0, 0, 1]: std sqrt(1/3) > 0.5 -> +-0.5 / sqrt(1/3)
    outcome, up = 1.0 / (math.sqrt(0.5) + 1e-6) * 0.5, 0.5 / math.sqrt(1 / 3)
    assert batch.advantages[0][:3] == pytest.approx([outcome + up] * 2 + [outcome])


@pytest.mark.parametrize("advantage, expected", [("dr_grpo", -0.18), ("rloo", -0.18 * 10 / 9)])
def test_call_term_uses_the_outcome_estimators_scale(advantage, expected):
    assert _ten_calls(advantage)[9] == pytest.approx(expected)


def _scored(calls, progress=None, rewards=None):
    traj = Trajectory(id="g/0", task_id="g", group_id="g", prompt_ids=[1], completion_ids=[7] * 4, loss_mask=[1] * 4,
                      logprobs=[0.0] * 4, tool_calls=calls, final_answer="1")
    for call, p in zip(calls, progress or []):
        if p is not None:
            call.scores["progress"] = p
    terms = rewards or [RewardTerm("solved", lambda t, task: 1.0)]
    asyncio.run(Scorer(terms).score(traj, TASK))
    return traj


def test_call_credit_combines_checks_progress_and_reward_credit():
    calls = [ToolCall(name="f", arguments={"x": 1}, result="2"),  # all checks pass
             ToolCall(name="f", arguments={"x": 1}, result="2"),  # a duplicate: novel = 0
             ToolCall(raw="{oops", error=ToolCallError.parse, result="bad"),  # nothing passes
             ToolCall(name="f", arguments={"x": 0}, error=ToolCallError.raised, result="boom"),  # not executed
             ToolCall(name="nope", error=ToolCallError.unknown_tool, result="unknown")]
    traj = _scored(calls, progress=[1.0, None, None, None, None])
    assert [c.credit for c in traj.tool_calls] == pytest.approx([2.0, 0.8, 0.0, 0.8, 0.4])
    assert traj.tool_calls[1].scores == {"parsed": 1.0, "known_tool": 1.0, "valid_arguments": 1.0, "executed": 1.0,
                                         "novel": 0.0}
    assert traj.tool_calls[0].scores["progress"] == 1.0


def test_reward_call_credit_enters_with_the_rewards_weight():
    calls = [ToolCall(name="f", arguments={}, result="1"), ToolCall(name="g", arguments={}, result="1")]
    terms = [RewardTerm("solved", lambda t, task: 1.0),
             RewardTerm("judge", lambda t, task: Score(0.5, calls=[1.0, None]), weight=2.0),
             RewardTerm("metric", lambda t, task: Score(0.0, calls=[-5.0, -5.0]), weight=0.0)]
    traj = _scored(calls, rewards=terms)
    assert [c.credit for c in traj.tool_calls] == pytest.approx([1.0 + 2.0, 1.0])
    assert traj.tool_calls[0].scores["judge"] == 1.0 and traj.tool_calls[1].scores["metric"] == -5.0
    assert traj.reward == pytest.approx(1.0 + 2.0 * 0.5)


def test_a_transiently_failed_call_gets_no_credit_and_its_retry_is_novel():
    """A transient failure is the env's draw, not the policy's choice: the failed call carries no credit (its
    tokens keep the outcome advantage alone), and the same call made again is a retry, not a duplicate."""
    failed = ToolCall(name="f", arguments={"x": 1}, error=ToolCallError.transient, result="Error 503 ...")
    retry = ToolCall(name="f", arguments={"x": 1}, result="2")
    again = ToolCall(name="f", arguments={"x": 1}, result="2")
    traj = _scored([failed, retry, again], progress=[None, 1.0, 1.0])
    assert [c.credit for c in traj.tool_calls] == pytest.approx([None, 2.0, 1.8])
    assert failed.scores["executed"] == 0.0 and retry.scores["novel"] == 1.0 and again.scores["novel"] == 0.0
