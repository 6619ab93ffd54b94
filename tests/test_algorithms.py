"""Every registry entry against hand-computed values."""

import math

import pytest
import torch

from rlvr.core.config import (ADVANTAGE_NAMES, AGGREGATION_NAMES, CREDIT_NAMES, KL_ESTIMATOR_NAMES,
                              LOSS_NAMES)
from rlvr.training.algorithms import (
    ADVANTAGES, AGGREGATIONS, CREDIT, KL_ESTIMATORS, LOSSES, BatchCounts, ObjectiveSpec, policy_objective, tis_weights,
    token_advantages, zero_variance_groups,
)

# three groups: [1, 0, 0, 1], [2, 2] (zero variance), [5] (a group of one)
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 5.0], dtype=torch.float64)
GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 2])


def test_registries_are_complete():
    """Each registry holds exactly the names the config accepts (declared torch-free in rlvr.core.config)."""
    assert set(ADVANTAGES) == set(ADVANTAGE_NAMES)
    assert set(CREDIT) == set(CREDIT_NAMES)
    assert set(LOSSES) == set(LOSS_NAMES)
    assert set(AGGREGATIONS) == set(AGGREGATION_NAMES)
    assert set(KL_ESTIMATORS) == set(KL_ESTIMATOR_NAMES)


def test_grpo_advantage_uses_unbiased_std_and_eps():
    # mean 0.5, std (n-1) = sqrt(4 * 0.25 / 3) = 0.57735
    a = ADVANTAGES["grpo"](REWARDS, GROUPS, eps=1e-6)
    s = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert a.tolist() == pytest.approx([s, -s, -s, s, 0.0, 0.0, 0.0], abs=1e-12)
    big_eps = ADVANTAGES["grpo"](REWARDS, GROUPS, eps=1.0)
    assert big_eps[0].item() == pytest.approx(0.5 / (math.sqrt(1 / 3) + 1.0))


def test_dr_grpo_advantage_has_no_std_division():
    a = ADVANTAGES["dr_grpo"](REWARDS, GROUPS)
    assert a.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0])


def test_rloo_advantage_is_leave_one_out():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 7.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    # 1 - mean(0, 0, 1) = 2/3;  3 - mean(1, 2) = 1.5;  1 - 2.5 = -1.5;  2 - 2 = 0;  group of one -> 0
    expected = [2 / 3, -2 / 3, -2 / 3, 2 / 3, 1.5, -1.5, 0.0, 0.0]
    assert ADVANTAGES["rloo"](rewards, groups).tolist() == pytest.approx(expected)


def test_zero_variance_is_exact_even_with_rounding():
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.7], dtype=torch.float32)
    groups = torch.tensor([0, 0, 0, 1, 1])
    assert zero_variance_groups(rewards, groups).tolist() == [True, False]
    for name, fn in ADVANTAGES.items():
        assert fn(rewards, groups)[:3].tolist() == [0.0, 0.0, 0.0], name


def _loss(name, ratio, adv, mask=None, clip_low=0.2, clip_high=0.28):
    logp = torch.log(torch.tensor([ratio], dtype=torch.float64)).requires_grad_()
    old = torch.zeros_like(logp)
    mask = torch.ones_like(logp) if mask is None else torch.tensor([mask], dtype=torch.float64)
    adv = torch.tensor([adv], dtype=torch.float64)
    loss, clipped = LOSSES[name](logp, old, adv, mask, clip_low, clip_high)
    (loss * mask).sum().backward()
    return loss, clipped, logp.grad


def test_grpo_loss_clips_asymmetrically():
    loss, clipped, grad = _loss("grpo", [1.5, 1.5, 0.5, 0.5], [1.0, -1.0, -1.0, 1.0])
    # ratio 1.5, A=+1: min(1.5, 1.28) -> clipped at 1 + clip_high; A=-1: min(-1.5, -1.28) = -1.5, unclipped
    # ratio 0.5, A=-1: min(-0.5, -0.8) -> clipped at 1 - clip_low; A=+1: min(0.5, 0.8) = 0.5, unclipped
    assert loss[0].tolist() == pytest.approx([-1.28, 1.5, 0.8, -0.5])
    assert clipped[0].tolist() == [True, False, True, False]
    # d(-r A)/d logp = -r A where unclipped, 0 where clipped
    assert grad[0].tolist() == pytest.approx([0.0, 1.5, 0.0, -0.5])


def test_gspo_loss_uses_the_masked_sequence_ratio():
    # sequence ratio = exp(mean(log 2, 0)) = sqrt(2) -> clipped to 1.28 for A = +1
    loss, clipped, grad = _loss("gspo", [2.0, 1.0], [1.0, 1.0])
    assert loss[0].tolist() == pytest.approx([-1.28, -1.28])
    assert clipped[0].tolist() == [True, True]
    assert grad[0].tolist() == pytest.approx([0.0, 0.0])
    # the masked token (ratio 5) does not enter the ratio: s = 1.1, gradient -s A on the sampled token
    loss, clipped, grad = _loss("gspo", [1.1, 5.0], [1.0, 1.0], mask=[1.0, 0.0])
    assert loss[0, 0].item() == pytest.approx(-1.1)
    assert grad[0].tolist() == pytest.approx([-1.1, 0.0])


def test_cispo_loss_clips_the_detached_weight_only():
    loss, clipped, grad = _loss("cispo", [3.0, 6.0], [2.0, 2.0], clip_low=1.0, clip_high=4.0)
    # weight min(3, 5) = 3: l = -3 * 2 * log 3; weight min(6, 5) = 5: l = -5 * 2 * log 6
    assert loss[0].tolist() == pytest.approx([-6 * math.log(3), -10 * math.log(6)])
    assert clipped[0].tolist() == [False, True]
    assert grad[0].tolist() == pytest.approx([-6.0, -10.0])  # gradient kept even where clipped


LOSS_ROWS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK_ROWS = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize("mode, expected", [
    ("token-mean", 10 / 4),  # all sampled tokens weigh the same
    ("seq-mean-token-mean", (2 + 4) / 2),  # mean of per-sequence means
    ("seq-mean-token-sum-norm", 10 / (2 * 3)),  # sum / (sequences * norm_tokens)
])
def test_aggregation_and_micro_batch_invariance(mode, expected):
    counts = BatchCounts(tokens=4, sequences=2, norm_tokens=3)
    full = AGGREGATIONS[mode](LOSS_ROWS, MASK_ROWS, counts)
    assert full.item() == pytest.approx(expected)
    split = sum(AGGREGATIONS[mode](LOSS_ROWS[i : i + 1], MASK_ROWS[i : i + 1], counts) for i in range(2))
    assert split.item() == pytest.approx(expected)


def test_kl_estimators():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert KL_ESTIMATORS["k1"](logp, ref).item() == pytest.approx(math.log(2))
    assert KL_ESTIMATORS["k3"](logp, ref).item() == pytest.approx(0.5 + math.log(2) - 1)  # e^d - d - 1, d = -log 2
    assert KL_ESTIMATORS["k3"](logp, logp).item() == 0.0


def test_tis_weights_truncate_at_cap():
    old = torch.log(torch.tensor([1.0, 0.5]))
    behaviour = torch.log(torch.tensor([0.25, 1.0]))
    assert tis_weights(old, behaviour, cap=2.0).tolist() == pytest.approx([2.0, 0.5])


def test_token_advantages_add_call_credit_on_call_tokens():
    outcome = torch.tensor([1.0, -1.0])
    call_index = torch.tensor([[-1, 0, 0, -1], [1, 1, -1, -1]])
    adv = token_advantages(outcome, call_index, torch.tensor([0.5, -2.0]), weight=0.5)
    assert adv.tolist() == [[1.0, 1.25, 1.25, 1.0], [-2.0, -2.0, -1.0, -1.0]]


def test_policy_objective_composes_pg_tis_and_kl():
    # one token: ratio 1 (on-policy), A = 2, TIS weight min(e^(0 - log 0.25), 3) = 3, k3 with ref = log 0.5
    logp = torch.zeros(1, 1, requires_grad=True)
    spec = ObjectiveSpec(loss="grpo", aggregation="token-mean", beta=0.1, kl_estimator="k3", tis_cap=3.0)
    loss, metrics = policy_objective(spec, BatchCounts(tokens=1, sequences=1), logp, torch.tensor([[2.0]]),
                                     torch.ones(1, 1), ref_logp=torch.log(torch.tensor([[0.5]])),
                                     behaviour_logp=torch.log(torch.tensor([[0.25]])))
    k3 = 0.5 + math.log(2) - 1
    assert loss.item() == pytest.approx(-2.0 * 3.0 + 0.1 * k3)
    assert metrics["tis_weight"].item() == pytest.approx(3.0)
    assert metrics["kl"].item() == pytest.approx(k3)
    loss.backward()
    # d/dlogp: pg -A * w = -6; k3: d/dlogp (e^(ref-logp) - (ref-logp) - 1) = -e^(ref-logp) + 1 = 0.5
    assert logp.grad.item() == pytest.approx(-6.0 + 0.1 * 0.5)


def test_policy_objective_requires_inputs_it_uses():
    logp = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="reference"):
        policy_objective(ObjectiveSpec(beta=0.1), BatchCounts(1, 1), logp, logp, torch.ones(1, 1))
    with pytest.raises(ValueError, match="behaviour"):
        policy_objective(ObjectiveSpec(tis_cap=2.0), BatchCounts(1, 1), logp, logp, torch.ones(1, 1))
