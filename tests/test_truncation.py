"""Truncated trajectories and DAPO's dynamic sampling, hand-computed: `mask_truncated`, the soft overlong
penalty, and refilling a step with groups that carry signal (rlvr/batch.py, rlvr/loop.py)."""

import pytest
import torch

from rlvr.training.algorithms import overlong_penalty
from rlvr.training.advantages import make_batch
from rlvr.core.config import AlgorithmConfig, ConfigError, load_config
from rlvr.core.contract import Group, Task, Trajectory
from rlvr.training.learner import Learner
from rlvr.core.protocols import RolloutResult
from rlvr.rollout.agent import per_task_seeds


def _traj(i, reward, n=4, finish="stop", group="g"):
    return Trajectory(id=f"{group}/{i}", task_id=group, group_id=group, prompt_ids=[1], completion_ids=[7] * n,
                      loss_mask=[1] * n, logprobs=[0.0] * n, reward=reward, finish_reason=finish)


def _group(trajectories, group="g"):
    return Group(id=group, task=Task(id=group, env="calculator", prompt="p"), trajectories=trajectories)


def test_mask_truncated_drops_them_from_the_loss_and_its_counts_but_not_from_the_baseline():
    group = _group([_traj(0, 1.0), _traj(1, 0.0, n=6, finish="max_tokens"), _traj(2, 0.0)])
    batch, metrics = make_batch([group], AlgorithmConfig(advantage="dr_grpo", mask_truncated=True))
    # baseline over all three rewards: mean 1/3
    assert [t.id for t in batch.trajectories] == ["g/0", "g/2"]
    assert batch.advantages == [pytest.approx([2 / 3] * 4), pytest.approx([-1 / 3] * 4)]
    assert metrics["batch/masked_truncated"] == 1 and metrics["batch/trajectories"] == 2
    counts = Learner.batch_counts(type("L", (), {"norm_tokens": None})(), batch)
    assert (counts.tokens, counts.sequences) == (8, 2)  # the truncated one's 6 tokens are not in the denominator
    batch, _ = make_batch([group], AlgorithmConfig(advantage="dr_grpo"))  # off by default
    assert len(batch.trajectories) == 3


def test_overlong_penalty_is_dapos_soft_punishment():
    # L_max 10, buffer 4: 0 up to 6 tokens, then (6 - n) / 4, -1 beyond 10
    lengths = torch.tensor([3, 6, 7, 8, 10, 11, 50])
    assert overlong_penalty(lengths, 10, 4).tolist() == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]


def test_overlong_penalty_enters_the_reward_before_the_advantage():
    # rewards 1, 1 with 6 and 8 sampled tokens: shaped 1, 0.5 -> dr_grpo +-0.25; without it the group is flat
    group = _group([_traj(0, 1.0, n=6), _traj(1, 1.0, n=8)])
    batch, metrics = make_batch([group], AlgorithmConfig(advantage="dr_grpo", overlong_max_tokens=10, overlong_buffer=4))
    assert batch.advantages == [pytest.approx([0.25] * 6), pytest.approx([-0.25] * 8)]
    assert metrics["batch/overlong_penalty"] == pytest.approx(-0.25) and metrics["reward/mean"] == 1.0
    assert metrics["batch/zero_variance_groups"] == 0
    with pytest.raises(ConfigError, match="overlong_buffer must be between 1"):
        load_config(None, ["algorithm.overlong_max_tokens=10"])


class FakeBackend:
    """Rollouts without a model: each task's group has the rewards `rewards[task id]` (else all 0)."""

    restarts = 0

    def __init__(self, rewards):
        self.rewards, self.submitted = rewards, []

    def submit(self, tasks, settings, seed, min_version):
        self.submitted.append((tuple(t.id for t in tasks), tuple(per_task_seeds(tasks, seed))))
        return tasks

    def collect(self, tasks):
        groups = [_group([_traj(i, r, group=t.id) for i, r in enumerate(self.rewards.get(t.id, [0.0, 0.0]))], t.id)
                  for t in tasks]
        return [RolloutResult(groups=groups, version=0, dropped=0, errors=[], seconds=1.0, score_s=0.0)]


def _source(tmp_path, *overrides):
    from rlvr.rollout.sources import EnvSource

    cfg = load_config(None, [f"output_dir={tmp_path}", "data.tasks_per_step=2", "data.train_tasks=40",
                             "rollout.group_size=2", "logging.wandb=disabled", *overrides])
    return EnvSource(cfg, backend=lambda learner: None)  # each test sets its own backend


def test_dynamic_sampling_refills_the_step_with_groups_that_carry_signal(tmp_path):
    source = _source(tmp_path, "algorithm.filter_zero_variance=true", "algorithm.refill_rounds=5")
    first = [t.id for t in source.sampler.batch(1)]
    extra = [t.id for t in source.sampler.extra(1, 1)] + [t.id for t in source.sampler.extra(1, 2)]
    # step 1's first task is flat, its second has signal; refill round 1 brings one more with signal
    signal = {first[1]: [1.0, 0.0], extra[0]: [0.0, 1.0], extra[1]: [1.0, 0.0], extra[2]: [1.0, 0.0]}
    source.backend = FakeBackend(signal)
    groups, metrics = source.rollouts(1)
    # the step's batch, then one refill round (one of two groups had signal: one round should bring one more)
    assert len(source.backend.submitted) == 2
    assert source.backend.submitted[1][0] == tuple(extra[:2])
    assert len({seed for _, seeds in source.backend.submitted for seed in seeds}) == 2  # the round's own seed
    # two groups with signal (the extra one beyond tasks_per_step left out) and the flat one for the count
    assert [g.id for g in groups] == [first[0], first[1], extra[0]]
    assert metrics["batch/refill_rounds"] == 1 and metrics["batch/signal_groups"] == 2
    assert metrics["batch/rolled_out_groups"] == 4
    batch, batch_metrics = make_batch(groups, source.cfg.algorithm)
    assert {t.group_id for t in batch.trajectories} == {first[1], extra[0]}
    assert batch_metrics["batch/zero_variance_groups"] == 1


def test_refill_rounds_that_go_out_together_keep_what_rounds_one_by_one_keep(tmp_path):
    source = _source(tmp_path, "algorithm.filter_zero_variance=true", "algorithm.refill_rounds=3")
    rounds = [[t.id for t in source.sampler.batch(1)]] + [[t.id for t in source.sampler.extra(1, r)] for r in (1, 2, 3)]
    assert len({i for ids in rounds for i in ids}) == 8  # no task drawn twice: rewards are looked up by id
    # nothing with signal in the step's batch: all three rounds go out at once; rounds 1 and 2 bring one each
    signal = {rounds[1][1]: [1.0, 0.0], rounds[2][0]: [0.0, 1.0], rounds[3][0]: [1.0, 0.0]}
    source.backend = FakeBackend(signal)
    groups, metrics = source.rollouts(1)
    assert [ids for ids, _ in source.backend.submitted] == [tuple(rounds[0]), tuple(rounds[1] + rounds[2] + rounds[3])]
    batch, _ = make_batch(groups, source.cfg.algorithm)
    assert [t.group_id for t in batch.trajectories] == [rounds[1][1]] * 2 + [rounds[2][0]] * 2  # round 3's left out
    assert metrics["batch/refill_rounds"] == 3 and metrics["batch/signal_groups"] == 2


def test_dynamic_sampling_stops_after_refill_rounds(tmp_path):
    source = _source(tmp_path, "algorithm.filter_zero_variance=true", "algorithm.refill_rounds=2")
    source.backend = FakeBackend({})  # every group flat
    groups, metrics = source.rollouts(1)
    # no group with signal: both rounds go out together, each task with its round's seed
    assert len(source.backend.submitted) == 2 and len(groups) == 6
    (step_seed, _), (round_1, _, round_2, _) = source.backend.submitted[0][1], source.backend.submitted[1][1]
    assert source.backend.submitted[1][1] == (round_1, round_1, round_2, round_2)
    assert len({step_seed, round_1, round_2}) == 3
    assert metrics["batch/refill_rounds"] == 2 and metrics["batch/signal_groups"] == 0
    plain = _source(tmp_path)  # without filter_zero_variance: one round, no refill metrics
    plain.backend = FakeBackend({})
    groups, metrics = plain.rollouts(1)
    assert len(plain.backend.submitted) == 1 and "batch/refill_rounds" not in metrics
