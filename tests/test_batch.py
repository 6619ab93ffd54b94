"""Scored groups -> per-token advantages, hand-computed, with per-call credit."""

import pytest

from rlvr.training.advantages import make_batch
from rlvr.core.config import AlgorithmConfig
from rlvr.core.contract import Group, Task, ToolCall, ToolCallError, Trajectory


def _traj(i, reward, calls=(), group="g", n=6):
    return Trajectory(id=f"{group}-{i}", task_id=group, group_id=group, prompt_ids=[1], completion_ids=[7] * n,
                      loss_mask=[1] * n, logprobs=[0.0] * n, reward=reward, tool_calls=list(calls))


def _group(trajectories, group="g"):
    return Group(id=group, task=Task(id=group, env="e", prompt="p"), trajectories=trajectories)


def test_outcome_advantage_is_broadcast_over_tokens():
    batch, metrics = make_batch([_group([_traj(0, 1.0), _traj(1, 0.0)])], AlgorithmConfig(advantage="dr_grpo"))
    assert batch.advantages == [[0.5] * 6, [-0.5] * 6]
    assert metrics["batch/zero_variance_groups"] == 0


def test_per_call_credit_lands_on_the_call_tokens_only():
    calls_a = [ToolCall(name="add", span=(0, 2), credit=1.0), ToolCall(raw="{bad", error=ToolCallError.parse)]
    calls_b = [ToolCall(name="add", span=(1, 3), credit=0.0), ToolCall(name="mul", span=(4, 6), credit=0.0)]
    batch, _ = make_batch([_group([_traj(0, 1.0, calls_a), _traj(1, 0.0, calls_b)])],
                          AlgorithmConfig(advantage="dr_grpo", credit="per_call", credit_weight=0.5))
    # call credits [1, 0, 0]: mean 1/3, centred in reward units (dr_grpo); the unparsed call has no span and no credit
    hi, lo = 2 / 3, -1 / 3
    assert batch.advantages[0] == pytest.approx([0.5 + 0.5 * hi] * 2 + [0.5] * 4)
    assert batch.advantages[1] == pytest.approx([-0.5, -0.5 + 0.5 * lo, -0.5 + 0.5 * lo, -0.5] + [-0.5 + 0.5 * lo] * 2)


def test_zero_variance_groups_are_counted_and_optionally_filtered():
    groups = [_group([_traj(0, 1.0, group="a"), _traj(1, 1.0, group="a")], "a"),
              _group([_traj(0, 1.0, group="b"), _traj(1, 0.0, group="b")], "b")]
    batch, metrics = make_batch(groups, AlgorithmConfig())
    assert metrics["batch/zero_variance_groups"] == 1 and len(batch.trajectories) == 4
    assert batch.advantages[0] == [0.0] * 6
    batch, _ = make_batch(groups, AlgorithmConfig(filter_zero_variance=True))
    assert [t.group_id for t in batch.trajectories] == ["b", "b"]
    batch, metrics = make_batch(groups[:1], AlgorithmConfig(filter_zero_variance=True))
    assert batch.trajectories == [] and metrics["batch/trajectories"] == 0  # the learner skips this step
