"""Off-policy data: truncated IS on by default where the data is off-policy, importance-ratio metrics, and
the dual clip for negative advantages, hand-computed."""

import math

import pytest
import torch

from rlvr.training.algorithms import BatchCounts, ObjectiveSpec, grpo_loss, policy_objective
from rlvr.core.config import ConfigError, check_training, effective_tis_cap, load_config


@pytest.mark.parametrize("overrides, cap", [
    ([], None),  # in-process HF rollouts with the learner's own model: on-policy
    (["rollout.engine=vllm"], 2.0),
    (["ray.enabled=true", "ray.max_staleness=1"], 2.0),
    (["ray.enabled=true", "ray.max_staleness=1", "algorithm.tis_cap=5"], 5.0),  # an explicit cap wins
    (["rollout.engine=vllm", "algorithm.tis_cap=0"], None),  # 0 turns it off
    (["algorithm.tis_cap=1.5"], 1.5),
    (["rollout.engine=vllm", "learner.old_logprobs=rollout"], None),  # the old policy is the behaviour policy
])
def test_tis_is_on_by_default_for_off_policy_data(overrides, cap):
    assert effective_tis_cap(load_config(None, overrides)) == cap


@pytest.mark.parametrize("overrides, named", [
    (["rollout.top_p=0.9"], "rollout.top_p"),
    (["algorithm.tis_cap=2"], "algorithm.tis_cap"),
])
def test_rollout_old_logprobs_refuse_what_they_cannot_serve(overrides, named):
    with pytest.raises(ConfigError, match=named):
        check_training(load_config(None, ["learner.old_logprobs=rollout", *overrides]))


def test_importance_ratio_metrics_over_sampled_tokens_only():
    # pi_old / pi_behaviour = e^(old - behaviour): 0.5, 1, 4 on sampled tokens; the masked token (ratio e^9) ignored
    logp = torch.zeros(1, 4, requires_grad=True)
    behaviour = torch.tensor([[math.log(2), 0.0, -math.log(4), -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    _, m = policy_objective(ObjectiveSpec(tis_cap=2.0), BatchCounts(3, 1), logp, torch.ones(1, 4), mask,
                            behaviour_logp=behaviour)
    assert m["is_ratio_mean"].item() / 3 == pytest.approx((0.5 + 1 + 4) / 3)
    assert m["is_ratio_min"].item() == pytest.approx(0.5) and m["is_ratio_max"].item() == pytest.approx(4.0)
    assert m["is_clipped_frac"].item() / 3 == pytest.approx(1 / 3)  # one of three above the cap
    assert m["tis_weight"].item() / 3 == pytest.approx((0.5 + 1 + 2) / 3)


def test_dual_clip_caps_the_loss_of_negative_advantages_with_large_ratios():
    # ratios 4, 2, 4 (old = 0, logp = log r); advantages -1, -1, +1; clip 0.2 / 0.28, c = 3
    logp = torch.log(torch.tensor([[4.0, 2.0, 4.0]])).requires_grad_()
    adv, old, mask = torch.tensor([[-1.0, -1.0, 1.0]]), torch.zeros(1, 3), torch.ones(1, 3)
    plain, _ = grpo_loss(logp, old, adv, mask, 0.2, 0.28)
    assert plain.tolist()[0] == pytest.approx([4.0, 2.0, -1.28])  # unbounded in the ratio for A < 0
    loss, clipped = grpo_loss(logp, old, adv, mask, 0.2, 0.28, dual_clip=3.0)
    assert loss.tolist()[0] == pytest.approx([3.0, 2.0, -1.28])  # -c A = 3 for the first; others unchanged
    assert clipped.tolist()[0] == [True, False, True]
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.0, 2.0, 0.0])  # d(-A r)/dlogp = -A r = 2 for the second
    assert load_config(None, []).algorithm.dual_clip == 3.0


def test_learner_logs_the_batchs_ratio_extremes_across_micro_batches():
    from test_learner import _batch, _learner, _policy

    learner = _learner(_policy(), ObjectiveSpec(tis_cap=2.0), micro_batch_tokens=64)  # several micro-batches
    batch = _batch()
    micro = learner.micro_batches(batch)
    assert len(micro) > 1
    with torch.no_grad():
        rho = torch.cat([(learner.completion_logprobs(mb) - mb.behaviour_logp).exp()[mb.mask > 0] for mb in micro])
    metrics = learner.step(batch)
    assert metrics["learner/is_ratio_min"] == pytest.approx(rho.min().item(), rel=1e-4)
    assert metrics["learner/is_ratio_max"] == pytest.approx(rho.max().item(), rel=1e-4)
    assert metrics["learner/is_ratio_mean"] == pytest.approx(rho.mean().item(), rel=1e-4)
    assert metrics["learner/is_clipped_frac"] == pytest.approx((rho > 2.0).float().mean().item(), rel=1e-4)
