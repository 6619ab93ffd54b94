"""Scored groups -> a Batch with per-token advantages (the registry functions do the arithmetic)."""

from __future__ import annotations

import zlib

import torch

from rlvr.core.config import AlgorithmConfig
from rlvr.core.contract import Batch, Group
from rlvr.training.algorithms import ADVANTAGES, CREDIT, overlong_penalty, token_advantages, zero_variance_groups


def make_batch(groups: list[Group], algo: AlgorithmConfig) -> tuple[Batch, dict[str, float]]:
    """Outcome advantages per group (ADVANTAGES[algo.advantage]) plus per-call credit on call tokens.

    Per-call credit (off by default: `algo.credit="none"`): the `credit` of every scored tool call becomes a
    call advantage (CREDIT[algo.credit]: compared across the group's calls, or across the calls made from the
    same env state, and scaled like the outcome estimator, algorithms.call_advantage) added with
    weight `algo.credit_weight` on the tokens of that call's span (docs/credit.md). Groups
    whose rewards are all equal carry no signal; they are counted, and dropped when
    `algo.filter_zero_variance` (DAPO dynamic sampling) so they do not dilute the token denominator. When
    that drops every group the batch is empty, and the learner skips its update for the step.

    Truncation: with `algo.overlong_max_tokens` DAPO's soft overlong penalty is added to each reward before
    the advantages (and before the flat-group test); with `algo.mask_truncated` trajectories that hit a
    token limit keep their place in their group's baseline but leave the batch, so neither their loss nor
    their tokens and sequence enter the learner's denominators.
    """
    if not groups:
        raise ValueError("make_batch: no groups")
    raw, _ = _rewards(groups)
    rewards, group_index = _rewards(groups, algo)
    flat = zero_variance_groups(rewards, group_index)
    metrics = {"batch/zero_variance_groups": float(flat.sum()), "batch/groups": float(len(groups)),
               "reward/mean": raw.mean().item(), "reward/std": raw.std().item() if len(raw) > 1 else 0.0}
    if algo.overlong_max_tokens is not None:
        metrics["batch/overlong_penalty"] = (rewards - raw).mean().item()
    if algo.shuffle_rewards:  # the random-reward control: same reward values, assigned at random
        rewards = rewards[torch.randperm(len(rewards), generator=torch.Generator().manual_seed(
            zlib.crc32(groups[0].trajectories[0].id.encode())))]
        flat = zero_variance_groups(rewards, group_index)
    if algo.filter_zero_variance:
        kept = [i for i, flat_g in enumerate(flat.tolist()) if not flat_g]
        if not kept:
            metrics["batch/trajectories"] = 0.0
            return Batch(trajectories=[], advantages=[]), metrics
        keep = torch.isin(group_index, torch.tensor(kept))
        groups, rewards = [groups[i] for i in kept], rewards[keep]
        group_index = torch.tensor([i for i, g in enumerate(groups) for _ in g.trajectories])
    outcome = ADVANTAGES[algo.advantage](rewards, group_index, eps=algo.std_eps)
    trajectories = [t for g in groups for t in g.trajectories]
    batch, metrics = _with_credit(trajectories, outcome, group_index, algo, metrics)
    if algo.mask_truncated:
        keep = [i for i, t in enumerate(batch.trajectories) if t.finish_reason != "max_tokens"]
        metrics["batch/masked_truncated"] = float(len(batch.trajectories) - len(keep))
        batch = Batch(trajectories=[batch.trajectories[i] for i in keep], advantages=[batch.advantages[i] for i in keep])
    metrics["batch/trajectories"] = float(len(batch.trajectories))
    return batch, metrics


def carries_signal(group: Group, algo: AlgorithmConfig) -> bool:
    """Whether the group's rewards (after the overlong penalty, as make_batch sees them) are not all equal."""
    rewards, group_index = _rewards([group], algo)
    return not bool(zero_variance_groups(rewards, group_index)[0])


def _with_credit(trajectories, outcome, group_index, algo: AlgorithmConfig, metrics: dict[str, float]):
    """Per-token advantages: the outcome advantage everywhere, plus the call term on call tokens."""
    # calls with credit, each with its trajectory and the completion tokens it covers
    scored = [(i, call) for i, t in enumerate(trajectories) for call in t.tool_calls
              if call.credit is not None and call.span is not None]
    if not scored or algo.credit == "none" or algo.credit_weight == 0:
        advantages = [[float(outcome[i])] * len(t.completion_ids) for i, t in enumerate(trajectories)]
        return Batch(trajectories=trajectories, advantages=advantages), metrics
    anchors: dict[tuple[int, str | None], int] = {}
    anchor_index = [anchors.setdefault((int(group_index[i]), call.anchor), len(anchors)) for i, call in scored]
    call_adv = CREDIT[algo.credit](torch.tensor([c.credit for _, c in scored], dtype=torch.float64),
                                   torch.tensor([int(group_index[i]) for i, _ in scored]),
                                   torch.tensor(anchor_index), eps=algo.std_eps,
                                   estimator=algo.advantage)
    metrics["credit/calls"] = float(len(scored))
    metrics["credit/mean"] = sum(c.credit for _, c in scored) / len(scored)
    call_index = [torch.full((1, len(t.completion_ids)), -1, dtype=torch.long) for t in trajectories]
    for c, (i, call) in enumerate(scored):
        call_index[i][0, call.span[0] : call.span[1]] = c
    advantages = [token_advantages(outcome[i : i + 1], call_index[i], call_adv, algo.credit_weight)[0].tolist()
                  for i in range(len(trajectories))]
    return Batch(trajectories=trajectories, advantages=advantages), metrics


def _rewards(groups: list[Group], algo: AlgorithmConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (N,) float64, with the overlong penalty when `algo` sets one, and the group index (N,)."""
    rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64)
    if algo is not None and algo.overlong_max_tokens is not None:
        lengths = torch.tensor([t.num_sampled_tokens for g in groups for t in g.trajectories])
        rewards = rewards + overlong_penalty(lengths, algo.overlong_max_tokens, algo.overlong_buffer)
    return rewards, torch.tensor([i for i, g in enumerate(groups) for _ in g.trajectories])
