"""`rlvr dpo CONFIG`: preference optimisation (DPO, IPO) of a LoRA policy on multi-turn tool trajectories.

Pairs come from a JSON-lines file of chosen and rejected conversations (`dpo.pairs`), or from the starting
policy's own rollouts: `dpo.tasks` tasks, `rollout.group_size` trajectories each, sampled under
`env.conditions` and scored by the run's rewards; a group's best and worst trajectories form a pair when their
rewards differ by `dpo.margin` or more, then its second best and second worst, and so on. Rollout
trajectories are trained on token for token; conversations from a file are rendered as SFT renders them
(`tokenize_conversation`). Either way the loss covers exactly the tokens a rollout samples: tool results and
user turns are masked.

The reference is the starting policy: a frozen copy of `model.init_adapter` (the base model when there is
none), run without grad before each step's policy forward and backward; a pair's chosen and rejected share
a micro-batch. TRL's DPOTrainer cannot take token-exact multi-turn input with tool results masked, so this
runs its loss (tested equal, with gradients, on the same batch) on the RL learner.

`dpo.credit=first_divergence` (ToolPO-style per-call credit) keeps, on each side, only the assistant turn in
which the two trajectories first differ: the call (or answer) that decided between them. Everything before it
is shared and cancels in the margin anyway; what follows it is conditioned on different histories, and
standard DPO (`trajectory`) spreads the preference over all of it.
"""

from __future__ import annotations

import time
from typing import Any

from rlvr.core.config import Config, ConfigError
from rlvr.core.contract import Batch, Group, Trajectory

Pair = tuple[Trajectory, Trajectory]  # (chosen, rejected)


def pairs_from_groups(groups: list[Group], margin: float) -> list[Pair]:
    """Within each group: best with worst, second best with second worst, ... while the reward gap is at
    least `margin`. Trajectories without a reward (dropped by a reward's on_error) are left out."""
    pairs = []
    for group in groups:
        scored = sorted((t for t in group.trajectories if t.reward is not None), key=lambda t: t.reward, reverse=True)
        for best, worst in zip(scored[: len(scored) // 2], reversed(scored[len(scored) // 2:])):
            if best.reward - worst.reward < margin:
                break
            pairs.append((best, worst))
    return pairs


def _turns(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of 1s in a loss mask: the assistant turns of a completion."""
    runs, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    return runs


def first_divergence(pair: Pair) -> Pair:
    """The pair with each side's loss mask cut to its assistant turn that holds, or first follows, the first
    token where the two completions differ (a tool result can differ first: a transient failure)."""
    chosen, rejected = pair
    if chosen.prompt_ids != rejected.prompt_ids:
        raise ValueError(f"first_divergence: {chosen.id} and {rejected.id} do not share a prompt")
    a, b = chosen.completion_ids, rejected.completion_ids
    split = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return _keep_turn_at(chosen, split), _keep_turn_at(rejected, split)


def _keep_turn_at(t: Trajectory, position: int) -> Trajectory:
    turn = next(((s, e) for s, e in _turns(t.loss_mask) if e > position), None)
    mask = [0] * len(t.loss_mask)
    if turn is not None:
        mask[turn[0]: turn[1]] = [1] * (turn[1] - turn[0])
    return t.model_copy(update={"loss_mask": mask})


def file_pairs(cfg: Config, renderer) -> list[Pair]:
    """`dpo.pairs`: JSON lines {"chosen": messages, "rejected": messages, "tools"}, rendered as SFT renders."""
    import json
    from pathlib import Path

    from rlvr.rollout.demonstrations import as_trajectory, tokenize_conversation

    pairs = []
    try:
        lines = Path(cfg.dpo.pairs).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"dpo.pairs: cannot read {cfg.dpo.pairs}: {e.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"dpo.pairs: {cfg.dpo.pairs} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where} is not JSON ({e.msg})") from None
        sides = []
        for side in ("chosen", "rejected"):
            messages = row.get(side) if isinstance(row, dict) else None
            if not isinstance(messages, list) or not messages:
                raise ConfigError(f"{where} has no \"{side}\" list of messages")
            tokens = tokenize_conversation(renderer, messages, row.get("tools") or [], cfg.sft.max_length)
            if tokens is None or 1 not in tokens["assistant_masks"]:
                raise ConfigError(f"{where}: the {side} conversation has no assistant turn within sft.max_length")
            sides.append(as_trajectory(number, tokens).model_copy(update={"id": f"pair-{number}/{side}"}))
        pairs.append((sides[0], sides[1]))
    if not pairs:
        raise ConfigError(f"dpo.pairs: {cfg.dpo.pairs} holds no pairs")
    return pairs


def rollout_pairs(cfg: Config) -> tuple[list[Pair], dict[str, float]]:
    """Pairs from the starting policy's rollouts (see the module docstring) and what they came from."""
    from rich.progress import track

    from rlvr.core.tasks import load_tasks
    from rlvr.rollout.workers import RolloutWorker

    worker = RolloutWorker(cfg)  # loads model.init_adapter: the starting policy
    try:
        tasks = load_tasks(cfg.data.source, worker.env, cfg.dpo.tasks, cfg.seed, "train", cfg.env.options,
                           no_tool_fraction=cfg.env.conditions.no_tool_fraction, columns=cfg.data.columns)
        tasks = tasks[: cfg.dpo.tasks]  # a file or dataset gives all its rows
        per_call = cfg.data.tasks_per_step
        groups = []
        for start in track(range(0, len(tasks), per_call), description="dpo rollouts"):
            groups += worker.rollout(tasks[start: start + per_call], cfg.rollout, seed=cfg.seed * 1_000_003 + start).groups
    except ValueError as e:
        raise ConfigError(str(e)) from None
    finally:
        worker.close()
    pairs = pairs_from_groups(groups, cfg.dpo.margin)
    rewards = [t.reward for g in groups for t in g.trajectories if t.reward is not None]
    return pairs, {"rollouts": float(len(rewards)), "rollout_reward": sum(rewards) / max(len(rewards), 1),
                   "pairs": float(len(pairs))}


def micro_batch_rows(pairs: list[Pair], budget: int) -> list[list[list[int]]]:
    """Rows of micro-batches over a batch laid out chosen, rejected, chosen, ...: whole pairs, as many as fit
    in `budget` tokens (at least one)."""
    micro, rows, used = [], [], 0
    for k, (c, r) in enumerate(pairs):
        size = sum(len(t.prompt_ids) + len(t.completion_ids) for t in (c, r))
        if rows and used + size > budget:
            micro.append(rows)
            rows, used = [], 0
        rows += [[2 * k], [2 * k + 1]]
        used += size
    return micro + ([rows] if rows else [])


def dpo(cfg: Config, pairs: list[Pair] | None = None):
    """Train, save the adapter into a run folder `<output_dir>/<name>-dpo-<time>/adapter`; returns the Run.
    `pairs` (e.g. `rollout_pairs(cfg)[0]`, shared by runs that compare credit modes) replaces dpo.pairs and
    the rollouts."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rlvr.rollout.chat import ChatRenderer
    from rlvr.run import Run
    from rlvr.stages.sft import epoch_batches, epoch_steps
    from rlvr.training.algorithms import BatchCounts, ObjectiveSpec, preference_objective
    from rlvr.training.checkpoint import save_adapter
    from rlvr.training.learner import Learner, load_policy, make_micro_batch
    from rlvr.training.models import load_tokenizer

    source: dict[str, Any] = {}
    if pairs is not None:
        source = {"pairs": float(len(pairs))}
    elif cfg.dpo.pairs:
        pairs = file_pairs(cfg, ChatRenderer(load_tokenizer(cfg.model.name), cfg.rollout.tool_format))
    else:
        pairs, source = rollout_pairs(cfg)
        if not pairs:
            raise ConfigError(f"dpo: no pair in {source['rollouts']:.0f} rollouts reached a reward gap of dpo.margin="
                              f"{cfg.dpo.margin:g} (mean reward {source['rollout_reward']:.3f})")
    if not pairs:
        raise ConfigError("dpo: no preference pairs to train on")
    if cfg.dpo.credit == "first_divergence":
        pairs = [first_divergence(p) for p in pairs]
    run = Run(cfg.model_copy(update={"name": f"{cfg.name}-dpo"}))
    model = load_policy(cfg, reference=True)
    device = next(model.parameters()).device
    total = epoch_steps(len(pairs), cfg.dpo.batch_size, cfg.dpo.epochs)
    learner_cfg = cfg.learner.model_copy(update=dict(  # TRL's DPO defaults, LoRA's learning rate
        lr=cfg.dpo.lr, lr_schedule="linear", warmup_steps=0, weight_decay=0.0, adam_betas=(0.9, 0.999),
        grad_clip=1.0, epochs=1, mini_batches=1))
    learner = Learner(model, learner_cfg, ObjectiveSpec(), total_steps=total, objective=lambda counts, logp, mb:
                      preference_objective(cfg.dpo.loss, cfg.dpo.beta, counts.sequences // 2, logp, mb.ref_logp,
                                           mb.mask))
    if source:
        run.log(0, {f"dpo/{k}": v for k, v in source.items()})
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as progress:
        bar = progress.add_task("dpo", total=total)
        for step, chosen, epoch in epoch_batches(pairs, cfg.dpo.batch_size, cfg.dpo.epochs, cfg.seed):
            flat = [t for pair in chosen for t in pair]
            batch = Batch(trajectories=flat, advantages=[[0.0] * len(t.completion_ids) for t in flat])
            micro = [make_micro_batch(batch, rows, device)
                     for rows in micro_batch_rows(chosen, cfg.learner.micro_batch_tokens)]
            with torch.no_grad():
                for mb in micro:
                    mb.ref_logp = learner.completion_logprobs(mb, adapter=False)
            model.train()
            grad_norm, totals = learner.update(micro, BatchCounts(tokens=sum(t.num_sampled_tokens for t in flat),
                                                                 sequences=len(flat)))
            model.eval()
            metrics = {"dpo/loss": totals.pop("loss"), "dpo/grad_norm": grad_norm,
                       "dpo/lr": learner.scheduler.get_last_lr()[0], "dpo/epoch": epoch,
                       **{f"dpo/{k}": v / len(chosen) for k, v in totals.items()}}
            run.log(step, metrics)
            progress.update(bar, advance=1, description=f"dpo loss {metrics['dpo/loss']:.3f} "
                                                        f"accuracy {metrics['dpo/rewards/accuracy']:.2f}")
            if cfg.dpo.time_limit_s and time.perf_counter() - start > cfg.dpo.time_limit_s:
                break
    save_adapter(learner.adapter_state(), run.path / "adapter")
    run.finish()
    return run
