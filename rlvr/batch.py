"""Scored groups -> a Batch with per-token advantages (the registry functions do the arithmetic)."""

from __future__ import annotations

import torch

from rlvr.algorithms import ADVANTAGES, grpo_advantage, token_advantages, zero_variance_groups
from rlvr.config import AlgorithmConfig
from rlvr.contract import Batch, Group


def make_batch(groups: list[Group], algo: AlgorithmConfig) -> tuple[Batch, dict[str, float]]:
    """Outcome advantages per group (ADVANTAGES[algo.advantage]) plus per-call credit on call tokens.

    Per-call credit: the `credit` of every scored tool call is normalised across the calls of its group
    (grpo-style) and added with weight `algo.credit_weight` on the tokens of that call's span. Groups
    whose rewards are all equal carry no signal; they are counted, and dropped when
    `algo.filter_zero_variance` (DAPO dynamic sampling) so they do not dilute the token denominator.
    """
    if not groups:
        raise ValueError("make_batch: no groups")
    rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64)
    group_index = torch.tensor([i for i, g in enumerate(groups) for _ in g.trajectories])
    flat = zero_variance_groups(rewards, group_index)
    metrics = {"batch/zero_variance_groups": float(flat.sum()), "batch/groups": float(len(groups)),
               "reward/mean": rewards.mean().item(), "reward/std": rewards.std().item() if len(rewards) > 1 else 0.0}
    if algo.filter_zero_variance:
        keep = [g for g, flat_g in zip(groups, flat.tolist()) if not flat_g]
        if not keep:
            raise ValueError(f"make_batch: all {len(groups)} groups have zero reward variance; nothing to train on "
                             "(filter_zero_variance=true)")
        groups = keep
        rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64)
        group_index = torch.tensor([i for i, g in enumerate(groups) for _ in g.trajectories])
    outcome = ADVANTAGES[algo.advantage](rewards, group_index, eps=algo.std_eps)

    trajectories = [t for g in groups for t in g.trajectories]
    # calls with credit, their group, and which completion tokens they cover
    call_credit, call_group, spans = [], [], []
    for i, t in enumerate(trajectories):
        for call in t.tool_calls:
            if call.credit is not None and call.span is not None:
                call_credit.append(call.credit)
                call_group.append(int(group_index[i]))
                spans.append((i, *call.span))
    advantages = []
    if call_credit and algo.credit_weight != 0:
        call_adv = grpo_advantage(torch.tensor(call_credit, dtype=torch.float64), torch.tensor(call_group),
                                  eps=algo.std_eps)
        for i, t in enumerate(trajectories):
            call_index = torch.full((1, len(t.completion_ids)), -1, dtype=torch.long)
            for c, (j, start, end) in enumerate(spans):
                if j == i:
                    call_index[0, start:end] = c
            advantages.append(token_advantages(outcome[i : i + 1], call_index, call_adv, algo.credit_weight)[0].tolist())
    else:
        advantages = [[float(outcome[i])] * len(t.completion_ids) for i, t in enumerate(trajectories)]
    metrics["batch/trajectories"] = float(len(trajectories))
    return Batch(trajectories=trajectories, advantages=advantages), metrics
