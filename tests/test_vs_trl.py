"""Differential test: TRL's own GRPO loss (GRPOTrainer._compute_loss) on the same random tensors.

TRL's method is run unmodified; only the model forward it would call is replaced by the given
log-probs, and the accelerator by a single-process stand-in (reduce/gather are identities).
"""

import types
import zlib
from collections import defaultdict

import pytest
import torch

from rlvr.training.algorithms import BatchCounts, ObjectiveSpec, policy_objective, tis_weights

trl = pytest.importorskip("trl")

B, T = 4, 6


class _SingleProcess:
    num_processes = 1
    sync_gradients = True

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    gather_for_metrics = gather


def _trl_loss(loss_type, level, logp, old, adv, mask, *, eps_low, eps_high, beta=0.0, ref=None, is_ratio=None):
    trainer = trl.GRPOTrainer.__new__(trl.GRPOTrainer)
    settings = dict(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=is_ratio is not None,
        vllm_importance_sampling_correction=is_ratio is not None, current_gradient_accumulation_steps=1,
        max_completion_length=T, accelerator=_SingleProcess(), _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics={"train": defaultdict(list)}, model=types.SimpleNamespace(training=True),
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
    )
    for key, value in settings.items():
        setattr(trainer, key, value)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
    inputs = dict(
        prompt_ids=torch.zeros(B, 1, dtype=torch.long), prompt_mask=torch.ones(B, 1),
        completion_ids=torch.zeros(B, T, dtype=torch.long), completion_mask=mask,
        advantages=adv, old_per_token_logps=old, num_items_in_batch=mask.sum(),
    )
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    return trainer._compute_loss(None, inputs)


def _tensors(seed):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g) * 3).double()
    old = logp + 0.3 * torch.randn(B, T, generator=g).double()  # ratios spread over both clip bounds
    ref = logp + 0.2 * torch.randn(B, T, generator=g).double()
    behaviour = old + 0.5 * torch.randn(B, T, generator=g).double()
    adv = torch.randn(B, generator=g).double()
    lengths = torch.tensor([6, 3, 1, 4])
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    return logp, old, ref, behaviour, adv, mask


# (TRL loss_type, TRL importance_sampling_level, rlvr loss, rlvr aggregation, TRL epsilon_high -> rlvr clip_high)
CASES = [
    ("dapo", "token", "grpo", "token-mean", lambda e: e),
    ("bnpo", "token", "grpo", "token-mean", lambda e: e),
    ("grpo", "token", "grpo", "seq-mean-token-mean", lambda e: e),
    ("dr_grpo", "token", "grpo", "seq-mean-token-sum-norm", lambda e: e),
    ("grpo", "sequence", "gspo", "seq-mean-token-mean", lambda e: e),
    ("dapo", "sequence", "gspo", "token-mean", lambda e: e),
]


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("trl_type, level, loss, aggregation, clip_high", CASES)
def test_matches_trl(trl_type, level, loss, aggregation, clip_high, beta):
    logp, old, ref, _, adv, mask = _tensors(seed=zlib.crc32(f"{trl_type}{level}".encode()) % 1000)
    trl_logp = logp.clone().requires_grad_()
    expected = _trl_loss(trl_type, level, trl_logp, old, adv, mask, eps_low=0.2, eps_high=0.28, beta=beta, ref=ref)
    expected.backward()

    ours_logp = logp.clone().requires_grad_()
    spec = ObjectiveSpec(loss=loss, aggregation=aggregation, clip_low=0.2, clip_high=clip_high(0.28), beta=beta)
    counts = BatchCounts(tokens=int(mask.sum()), sequences=B, norm_tokens=T)
    ours, _ = policy_objective(spec, counts, ours_logp, adv[:, None].expand(B, T), mask, old_logp=old, ref_logp=ref)
    ours.backward()
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours_logp.grad, trl_logp.grad)


def test_cispo_matches_trl():
    # TRL caps the IS weight at epsilon_high (absolute); rlvr clips to [1 - clip_low, 1 + clip_high]
    logp, old, _, _, adv, mask = _tensors(seed=7)
    old = logp + torch.randn(B, T, dtype=torch.float64)  # push some ratios past the cap
    trl_logp = logp.clone().requires_grad_()
    expected = _trl_loss("cispo", "token", trl_logp, old, adv, mask, eps_low=0.2, eps_high=2.0)
    expected.backward()
    ours_logp = logp.clone().requires_grad_()
    spec = ObjectiveSpec(loss="cispo", aggregation="token-mean", clip_low=1.0, clip_high=1.0)
    ours, _ = policy_objective(spec, BatchCounts(tokens=int(mask.sum()), sequences=B), ours_logp,
                               adv[:, None].expand(B, T), mask, old_logp=old)
    ours.backward()
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours_logp.grad, trl_logp.grad)


def test_truncated_importance_sampling_matches_trl():
    # TRL's token_truncate mode: ratio = clamp(exp(old - sampler), max=C), multiplied before the KL term
    logp, old, ref, behaviour, adv, mask = _tensors(seed=11)
    is_ratio = torch.exp(old - behaviour).clamp(max=2.0)
    trl_logp = logp.clone().requires_grad_()
    expected = _trl_loss("dapo", "token", trl_logp, old, adv, mask, eps_low=0.2, eps_high=0.28, beta=0.04,
                         ref=ref, is_ratio=is_ratio)
    expected.backward()
    torch.testing.assert_close(tis_weights(old, behaviour, 2.0), is_ratio)
    ours_logp = logp.clone().requires_grad_()
    spec = ObjectiveSpec(loss="grpo", aggregation="token-mean", beta=0.04, tis_cap=2.0)
    ours, _ = policy_objective(spec, BatchCounts(tokens=int(mask.sum()), sequences=B), ours_logp,
                               adv[:, None].expand(B, T), mask, old_logp=old, ref_logp=ref, behaviour_logp=behaviour)
    ours.backward()
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours_logp.grad, trl_logp.grad)
