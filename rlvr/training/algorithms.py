"""RL algorithms as pure tensor functions in literal registries.

Shapes: N = trajectories in the batch, B = trajectories in a micro-batch, T = completion tokens
(padded), C = tool calls. `mask` is the loss mask (1 on sampled tokens, 0 on tool results and padding).
Every log-prob is a log-prob of the sampled token after temperature, in float32.

Formulas follow ../shared/reference/algorithms.md (DeepSeekMath GRPO, Dr.GRPO, RLOO, DAPO, GSPO,
CISPO, Schulman's k1/k3 KL estimators, token-level truncated importance sampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rlvr.core.config import (ADVANTAGE_NAMES, AGGREGATION_NAMES, CREDIT_NAMES, KL_ESTIMATOR_NAMES,
                              LOSS_NAMES, PREFERENCE_LOSS_NAMES)

# Log-ratios are clamped before exp() so one wild token cannot produce inf (verl uses the same bound).
LOG_RATIO_BOUND = 20.0


# --------------------------------------------------------------------------------------------------
# Advantages: (rewards (N,), group_index (N,) long) -> advantages (N,)


def _group_sums(values: Tensor, group_index: Tensor, num_groups: int) -> Tensor:
    return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, group_index, values)


def zero_variance_groups(rewards: Tensor, group_index: Tensor) -> Tensor:
    """(num_groups,) bool: True where every reward of the group is identical (no learning signal).

    Args: rewards (N,) float; group_index (N,) long in [0, num_groups).
    """
    num_groups = int(group_index.max()) + 1
    init = torch.full((num_groups,), float("inf"), dtype=rewards.dtype, device=rewards.device)
    low = init.scatter_reduce(0, group_index, rewards, "amin")
    high = (-init).scatter_reduce(0, group_index, rewards, "amax")
    return low == high


def _centered(rewards: Tensor, group_index: Tensor) -> tuple[Tensor, Tensor]:
    """(r - group mean, group size), both (N,); exactly zero in zero-variance groups."""
    num_groups = int(group_index.max()) + 1
    count = _group_sums(torch.ones_like(rewards), group_index, num_groups)
    mean = _group_sums(rewards, group_index, num_groups) / count
    centered = rewards - mean[group_index]
    # all-equal groups carry no signal: force an exact 0 instead of a rounding residue
    centered = centered.masked_fill(zero_variance_groups(rewards, group_index)[group_index], 0.0)
    return centered, count[group_index]


def grpo_advantage(rewards: Tensor, group_index: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO: A_i = (R_i - mean_g(R)) / (std_g(R) + eps), std with Bessel's (n-1) correction.

    Args: rewards (N,); group_index (N,) long. Returns (N,). Groups of one and zero-variance groups get 0.
    """
    centered, count = _centered(rewards, group_index)
    num_groups = int(group_index.max()) + 1
    var = _group_sums(centered**2, group_index, num_groups)[group_index] / (count - 1).clamp(min=1)
    return centered / (var.sqrt() + eps)


def dr_grpo_advantage(rewards: Tensor, group_index: Tensor, eps: float = 1e-6) -> Tensor:
    """Dr.GRPO: A_i = R_i - mean_g(R), no std division (no question-difficulty bias).

    Args: rewards (N,); group_index (N,) long; eps unused (shared signature). Returns (N,).
    """
    return _centered(rewards, group_index)[0]


def rloo_advantage(rewards: Tensor, group_index: Tensor, eps: float = 1e-6) -> Tensor:
    """RLOO: A_i = R_i - mean_{j != i} R_j = n/(n-1) * (R_i - mean_g(R)); 0 for groups of one.

    Args: rewards (N,); group_index (N,) long; eps unused (shared signature). Returns (N,).
    """
    centered, count = _centered(rewards, group_index)
    return centered * count / (count - 1).clamp(min=1)


def overlong_penalty(lengths: Tensor, max_tokens: int, buffer: int) -> Tensor:
    """DAPO's soft overlong punishment, added to the reward (reference section 2.1 item 4):

        R_len = 0                               if n <= L_max - L_buf
              = ((L_max - L_buf) - n) / L_buf   if L_max - L_buf < n <= L_max
              = -1                              if n > L_max

    Args: lengths (N,) sampled tokens of each trajectory; max_tokens L_max; buffer L_buf (0 < L_buf < L_max).
    Returns (N,) float64 in [-1, 0].
    """
    start = max_tokens - buffer
    return ((start - lengths.to(torch.float64)) / buffer).clamp(min=-1.0, max=0.0)


ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "grpo": grpo_advantage,
    "dr_grpo": dr_grpo_advantage,
    "rloo": rloo_advantage,
}


# --------------------------------------------------------------------------------------------------
# Per-call credit: (credit (C,), group_index (C,), anchor_index (C,) long, eps, estimator) -> call advantages (C,)
# `credit` is each tool call's combined score (docs/credit.md); `anchor_index` numbers the distinct
# (group, env state before the call) pairs, so calls sharing it were made from the same state.
# `estimator` is the outcome advantage's name: the call term is scaled like it (see `call_advantage`).

# grpo divides the call term by max(std, CREDIT_STD_FLOOR) instead of std + eps: credits are in reward
# units (a check is worth 1/5, progress +-1), and a plain std turns a tiny difference between
# near-identical calls (one duplicate among ten: credit 0.8 against 1.0) into -2.85, more than any
# binary outcome advantage. 0.5 is the std of calls that differ by one full unit half of the time, so
# calls that really differ are normalised as before and near-identical ones get a term in proportion.
CREDIT_STD_FLOOR = 0.5


def call_advantage(credit: Tensor, index: Tensor, estimator: str = "grpo", eps: float = 1e-6) -> Tensor:
    """The outcome estimator's formula applied to call credits compared within `index`:

        grpo:    (c - mean) / max(std, CREDIT_STD_FLOOR)      (std with Bessel's correction)
        dr_grpo: c - mean                                      (reward units, like its advantages)
        rloo:    n / (n - 1) * (c - mean)                      (leave-one-out baseline over the n calls)

    Args: credit (C,) float; index (C,) long comparison sets; eps unused (shared signature). Returns (C,),
    exactly 0 for a call alone in its set or in a set whose credits are all equal.
    """
    if estimator == "grpo":
        centered, count = _centered(credit, index)
        num = int(index.max()) + 1
        std = (_group_sums(centered**2, index, num)[index] / (count - 1).clamp(min=1)).sqrt()
        return centered / std.clamp(min=CREDIT_STD_FLOOR)
    if estimator not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator {estimator!r}")
    return ADVANTAGES[estimator](credit, index, eps)


def no_credit(credit: Tensor, group_index: Tensor, anchor_index: Tensor, eps: float = 1e-6,
              estimator: str = "grpo") -> Tensor:
    """Outcome only: every call advantage is 0. Returns (C,)."""
    return torch.zeros_like(credit)


def per_call_credit(credit: Tensor, group_index: Tensor, anchor_index: Tensor, eps: float = 1e-6,
                    estimator: str = "grpo") -> Tensor:
    """`call_advantage` over all calls of the trajectory's group (DeepSeekMath process supervision, one
    score per call). Returns (C,); 0 where the group's calls all score the same."""
    return call_advantage(credit, group_index, estimator, eps)


def step_grouped_credit(credit: Tensor, group_index: Tensor, anchor_index: Tensor, eps: float = 1e-6,
                        estimator: str = "grpo") -> Tensor:
    """GiGPO-style step groups: `call_advantage` over the calls of the group made from the same env state
    (anchor); a call whose state no other call shares gets 0. Returns (C,)."""
    return call_advantage(credit, anchor_index, estimator, eps)


CREDIT: dict[str, Callable[..., Tensor]] = {
    "none": no_credit,
    "per_call": per_call_credit,
    "step_grouped": step_grouped_credit,
}


def token_advantages(outcome: Tensor, call_index: Tensor, call_advantage: Tensor, weight: float) -> Tensor:
    """Per-token advantages with per-call credit: A_t = A_outcome + w * A_call on the tokens of each call.

    Args:
        outcome: (B,) outcome advantage of each trajectory.
        call_index: (B, T) long, the index into `call_advantage` of the call token t belongs to, -1 outside calls.
        call_advantage: (C,) advantage of each call (e.g. its credit normalised across the group's calls).
        weight: w.
    Returns: (B, T).
    """
    adv = outcome[:, None].expand(call_index.shape).clone()
    inside = call_index >= 0
    adv[inside] += weight * call_advantage[call_index[inside]]
    return adv


# --------------------------------------------------------------------------------------------------
# Policy losses: (logp, old_logp, advantages, mask (B, T), clip_low, clip_high) -> (loss (B, T), clipped (B, T))
# `old_logp` is the policy before this update (pass logp.detach() for the on-policy first step);
# `clipped` marks tokens whose gradient the trust region removed, for the clip-fraction metric.


def _log_ratio(logp: Tensor, old_logp: Tensor) -> Tensor:
    return (logp - old_logp).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)


def _clipped_surrogate(ratio: Tensor, adv: Tensor, clip_low: float, clip_high: float,
                       dual_clip: float | None = None) -> tuple[Tensor, Tensor]:
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    loss, cut = -torch.minimum(unclipped, clipped), clipped < unclipped
    if dual_clip is not None:  # A < 0: the loss grows with the ratio unclipped; cap it at -A * c (no gradient)
        capped = (adv < 0) & (loss > -adv * dual_clip)
        loss, cut = torch.where(capped, -adv * dual_clip, loss), cut | capped
    return loss, cut


def grpo_loss(logp, old_logp, advantages, mask, clip_low: float, clip_high: float,
              dual_clip: float | None = None) -> tuple[Tensor, Tensor]:
    """PPO-clip per token with decoupled bounds (DAPO clip-higher) and verl's dual clip:

        r_t = exp(logp_t - old_t);  l_t = -min(r_t A_t, clip(r_t, 1 - clip_low, 1 + clip_high) A_t)
        if A_t < 0 and dual_clip = c:  l_t = min(l_t, -c A_t)

    The dual clip bounds the loss of a negative-advantage token whose ratio grew large (stale or
    off-policy data), where the plain clipped objective is unbounded (verl clip_ratio_c = 3).
    Args: logp, old_logp, advantages, mask: (B, T). Returns (loss (B, T), clipped (B, T) bool).
    """
    return _clipped_surrogate(_log_ratio(logp, old_logp).exp(), advantages, clip_low, clip_high, dual_clip)


def gspo_loss(logp, old_logp, advantages, mask, clip_low: float, clip_high: float,
              dual_clip: float | None = None) -> tuple[Tensor, Tensor]:
    """GSPO, token form: the sequence ratio s_i = exp(mean_t log r_{i,t}) clipped as a whole.

        s_{i,t} = sg(s_i) * exp(logp_t - sg(logp_t));  l_t = -min(s_{i,t} A_t, clip(s_{i,t}) A_t)

    With an advantage constant over the sequence this has the gradient of the sequence objective;
    the token form also admits per-token advantages (per-call credit). GSPO's paper clip range is
    tiny (clip_low=3e-4, clip_high=4e-4); `dual_clip` caps negative-advantage losses as in grpo_loss.
    Args: (B, T) each. Returns (loss (B, T), clipped (B, T)).
    """
    mask = mask.to(logp.dtype)
    seq_log_ratio = (_log_ratio(logp, old_logp) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    ratio = seq_log_ratio.detach().exp()[:, None] * (logp - logp.detach()).exp()
    return _clipped_surrogate(ratio, advantages, clip_low, clip_high, dual_clip)


def cispo_loss(logp, old_logp, advantages, mask, clip_low: float, clip_high: float,
               dual_clip: float | None = None) -> tuple[Tensor, Tensor]:
    """CISPO (MiniMax-M1): clip the detached IS weight, never the gradient:

        l_t = -sg(clip(r_t, 1 - clip_low, 1 + clip_high)) * A_t * logp_t

    TRL's `cispo` caps r at `epsilon_high` only: the same as clip_low=1, clip_high=epsilon_high - 1.
    `dual_clip` is unused: the weight is already bounded. Args: (B, T) each. Returns (loss (B, T), clipped (B, T) bool: weight hit a bound).
    """
    ratio = _log_ratio(logp, old_logp).exp()
    weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high).detach()
    return -weight * advantages * logp, weight != ratio.detach()


LOSSES: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "grpo": grpo_loss,
    "gspo": gspo_loss,
    "cispo": cispo_loss,
}


# --------------------------------------------------------------------------------------------------
# KL to the reference policy, per token: (logp, ref_logp (B, T)) -> (B, T)


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log pi - log pi_ref (unbiased, can be negative per token). Shapes (B, T) -> (B, T)."""
    return logp - ref_logp


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1 (unbiased for KL(pi || pi_ref), always >= 0). (B, T) -> (B, T)."""
    d = (ref_logp - logp).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    return d.exp() - d - 1.0


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": kl_k1, "k3": kl_k3}


def tis_weights(old_logp: Tensor, behaviour_logp: Tensor, cap: float) -> Tensor:
    """Token-level truncated importance sampling weight min(pi_old / pi_behaviour, C), detached.

    Corrects for the sampler (vLLM, another precision, a stale adapter) not being exactly the learner's
    policy. Args: (B, T) each. Returns (B, T).
    """
    return _log_ratio(old_logp, behaviour_logp).exp().clamp(max=cap).detach()


# --------------------------------------------------------------------------------------------------
# Aggregation: per-token loss (B, T) -> scalar, normalised by GLOBAL batch counts so that summing the
# micro-batch losses gives exactly the full-batch loss (and so the full-batch gradient).


@dataclass(frozen=True)
class BatchCounts:
    """Denominators taken over the whole batch, not the micro-batch."""

    tokens: int  # sum of the loss mask
    sequences: int  # trajectories with at least one sampled token
    norm_tokens: int | None = None  # Dr.GRPO's constant (max completion length)


def token_mean(loss: Tensor, mask: Tensor, counts: BatchCounts) -> Tensor:
    """DAPO token-level: sum_{i,t} l m / (global sum of m). Args: (B, T), (B, T)."""
    return (loss * mask).sum() / max(counts.tokens, 1)


def seq_mean_token_mean(loss: Tensor, mask: Tensor, counts: BatchCounts) -> Tensor:
    """Original GRPO: mean over sequences of each sequence's token mean. Args: (B, T), (B, T)."""
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / max(counts.sequences, 1)


def seq_mean_token_sum_norm(loss: Tensor, mask: Tensor, counts: BatchCounts) -> Tensor:
    """Dr.GRPO: sum_{i,t} l m / (sequences * norm_tokens), no per-sequence length. Args: (B, T), (B, T)."""
    if counts.norm_tokens is None:
        raise ValueError("seq-mean-token-sum-norm needs BatchCounts.norm_tokens (algorithm.loss_norm_tokens)")
    return (loss * mask).sum() / (max(counts.sequences, 1) * counts.norm_tokens)


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, BatchCounts], Tensor]] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


# --------------------------------------------------------------------------------------------------
# The full objective for one micro-batch.


@dataclass(frozen=True)
class ObjectiveSpec:
    """Which registry entries and coefficients make up the loss (from AlgorithmConfig)."""

    loss: str = "grpo"
    aggregation: str = "token-mean"
    clip_low: float = 0.2
    clip_high: float = 0.28
    beta: float = 0.0
    kl_estimator: str = "k3"
    tis_cap: float | None = None
    dual_clip: float | None = None


def nll_objective(counts: BatchCounts, logp: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Supervised fine-tuning: the negative log-likelihood of the loss-masked tokens, averaged over every such
    token of the batch (TRL's SFT loss with assistant-only labels). Args: logp, mask (B, T).
    Returns (loss, {"nll": the summed NLL, a token sum like the policy metrics})."""
    nll = -(logp * mask).sum()
    return nll / max(counts.tokens, 1), {"nll": nll.detach()}


# --------------------------------------------------------------------------------------------------
# Preference optimisation: losses of a pair's log-ratio margin z = (logp_c - ref_c) - (logp_r - ref_r),
# each summed over its sequence's loss-masked tokens (TRL's DPOTrainer loss_type names).


def dpo_sigmoid(z: Tensor, beta: float) -> Tensor:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta z). Args: z (P,). Returns (P,)."""
    return -F.logsigmoid(beta * z)


def ipo(z: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023): (z - 1 / (2 beta))^2, regressing the margin to a fixed target. (P,) -> (P,)."""
    return (z - 1.0 / (2.0 * beta)) ** 2


PREFERENCE_LOSSES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "sigmoid": dpo_sigmoid,
    "ipo": ipo,
}


def preference_objective(loss: str, beta: float, pairs: int, logp: Tensor, ref_logp: Tensor,
                         mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The preference loss of the pairs in one micro-batch, divided by the step's `pairs`.

    Rows alternate chosen, rejected: (2P, T) logp (with grad), ref_logp and mask. Returns (loss, metrics summed
    over the micro-batch's pairs): chosen and rejected implicit rewards beta * log-ratio, margin beta * z,
    accuracy (z > 0), as TRL logs them."""
    ratios = ((logp - ref_logp) * mask).sum(-1).view(-1, 2)  # (P, 2): chosen, rejected
    z = ratios[:, 0] - ratios[:, 1]
    rewards = beta * ratios.detach()
    metrics = {"rewards/chosen": rewards[:, 0].sum(), "rewards/rejected": rewards[:, 1].sum(),
               "rewards/margin": (beta * z.detach()).sum(), "rewards/accuracy": (z.detach() > 0).float().sum()}
    return PREFERENCE_LOSSES[loss](z, beta).sum() / pairs, metrics


def policy_objective(
    spec: ObjectiveSpec,
    counts: BatchCounts,
    logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    old_logp: Tensor | None = None,
    ref_logp: Tensor | None = None,
    behaviour_logp: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss of one micro-batch and its (summed, not yet averaged) metrics.

        l_t = LOSSES[loss](...) * tis_t + beta * KL_t;  loss = AGGREGATIONS[aggregation](l, mask, counts)

    Args: logp (B, T) with grad; advantages, mask (B, T); old_logp (B, T) or None for on-policy
    (then logp.detach()); ref_logp (B, T), needed when beta > 0; behaviour_logp (B, T), needed when tis_cap.
    Returns (scalar loss, metrics) where each metric is a sum over masked tokens (divide by counts.tokens),
    except those ending in `_min` / `_max`, which are the micro-batch's extremes (reduce with min / max).
    """
    mask = mask.to(logp.dtype)
    old = logp.detach() if old_logp is None else old_logp
    per_token, clipped = LOSSES[spec.loss](logp, old, advantages, mask, spec.clip_low, spec.clip_high,
                                           dual_clip=spec.dual_clip)
    metrics = {"clip_frac": (clipped.to(mask.dtype) * mask).sum()}
    if behaviour_logp is not None:  # importance ratios pi_old / pi_behaviour over the sampled tokens
        rho = _log_ratio(old, behaviour_logp).exp().detach()
        sampled = mask > 0
        metrics["is_ratio_mean"] = (rho * mask).sum()
        metrics["is_ratio_min"] = rho.masked_fill(~sampled, float("inf")).min()
        metrics["is_ratio_max"] = rho.masked_fill(~sampled, float("-inf")).max()
        if spec.tis_cap is not None:
            metrics["is_clipped_frac"] = ((rho > spec.tis_cap).to(mask.dtype) * mask).sum()
    if spec.tis_cap is not None:
        if behaviour_logp is None:
            raise ValueError("tis_cap is set but the batch has no behaviour log-probs")
        weights = tis_weights(old, behaviour_logp, spec.tis_cap)
        per_token = per_token * weights
        metrics["tis_weight"] = (weights * mask).sum()
    if spec.beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probs")
        kl = KL_ESTIMATORS[spec.kl_estimator](logp, ref_logp)
        per_token = per_token + spec.beta * kl
        metrics["kl"] = (kl.detach() * mask).sum()
    if behaviour_logp is not None:
        metrics["behaviour_logp_abs_diff"] = ((old - behaviour_logp).abs() * mask).sum()
    return AGGREGATIONS[spec.aggregation](per_token, mask, counts), metrics


def _check_names() -> None:
    """Each registry holds exactly the names the config accepts (rlvr/core/config.py declares them torch-free)."""
    declared = {"ADVANTAGE_NAMES": (ADVANTAGES, ADVANTAGE_NAMES), "CREDIT_NAMES": (CREDIT, CREDIT_NAMES),
                "LOSS_NAMES": (LOSSES, LOSS_NAMES), "AGGREGATION_NAMES": (AGGREGATIONS, AGGREGATION_NAMES),
                "KL_ESTIMATOR_NAMES": (KL_ESTIMATORS, KL_ESTIMATOR_NAMES),
                "PREFERENCE_LOSS_NAMES": (PREFERENCE_LOSSES, PREFERENCE_LOSS_NAMES)}
    for constant, (registry, names) in declared.items():
        if set(registry) != set(names):
            raise ImportError(f"rlvr.core.config.{constant} {sorted(names)} differs from its registry's names "
                              f"{sorted(registry)}: add or remove the name in both")


_check_names()
