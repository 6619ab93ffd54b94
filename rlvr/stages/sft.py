"""`rlvr sft CONFIG`: LoRA supervised fine-tuning on `rlvr synth` conversations, on the RL learner's path.

Conversations are rendered (rlvr/rollout/demonstrations.py) by the ChatRenderer the RL rollouts use: the
same chat template, the same tool format (tools in the system prompt for templates without tool support),
OpenAI `tool_calls` written as the model writes them in a rollout. The loss covers assistant tokens only: each assistant turn's text
(tool calls included) and its end-of-turn token, which are exactly the tokens a rollout samples; the
prompt, tool results and the template's headers between turns are masked (`assistant_masks`).

Training runs on the RL learner (rlvr/training/learner.py) with the NLL objective: a conversation is a
Trajectory whose prompt is everything before the first assistant token and whose loss mask is the
assistant mask, so SFT gets the learner's bf16 base weights, packing and LM head that scores only the
assistant tokens. TRL's SFTTrainer on the same conversations took ~4x as long here (its padded batches
and masked SDPA); its loss on the same batch is the same number (tests/test_sft.py), and so are its
optimiser defaults (AdamW, betas 0.9/0.999, no weight decay, gradient clip 1.0, a constant rate).
With `model.init_adapter` set, training continues that adapter. The adapter is the starting policy of
`rlvr train` (`model.init_adapter`).
"""

from __future__ import annotations

import math
import random
import time

from rlvr.core.config import Config
from rlvr.rollout.demonstrations import load_demonstrations


def epoch_steps(items: int, batch_size: int, epochs: float) -> int:
    """Optimiser steps of `epochs` passes over `items` examples in batches of `batch_size` (a part epoch counts)."""
    return math.ceil(epochs * -(-items // batch_size))


def epoch_batches(items: list, batch_size: int, epochs: float, seed: int):
    """(step, batch, epochs done) for `epoch_steps` steps; each epoch visits `items` in its own seeded order.
    SFT and DPO draw their batches so."""
    per_epoch = -(-len(items) // batch_size)
    rng = random.Random(seed)
    for step in range(1, epoch_steps(len(items), batch_size, epochs) + 1):
        if (step - 1) % per_epoch == 0:
            order = rng.sample(items, len(items))
        yield step, order[(step - 1) % per_epoch * batch_size:][:batch_size], step / per_epoch


def sft(cfg: Config):
    """Fine-tune, save the adapter into a run folder `<output_dir>/<name>-sft-<time>/adapter`; returns the Run."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rlvr.core.contract import Batch
    from rlvr.run import Run
    from rlvr.training.algorithms import ObjectiveSpec, nll_objective
    from rlvr.training.checkpoint import save_adapter
    from rlvr.training.learner import Learner, load_policy

    examples = load_demonstrations(cfg)  # bad data fails before the model loads
    run = Run(cfg.model_copy(update={"name": f"{cfg.name}-sft"}))
    sft_cfg = cfg.sft
    model = load_policy(cfg)
    total = epoch_steps(len(examples), sft_cfg.batch_size, sft_cfg.epochs)
    learner_cfg = cfg.learner.model_copy(update=dict(  # TRL's SFT defaults
        lr=sft_cfg.lr, lr_schedule="constant", warmup_steps=0, weight_decay=0.0, adam_betas=(0.9, 0.999),
        grad_clip=1.0, epochs=1, mini_batches=1))
    learner = Learner(model, learner_cfg, ObjectiveSpec(), total_steps=total,
                      objective=lambda counts, logp, mb: nll_objective(counts, logp, mb.mask))
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as progress:
        bar = progress.add_task("sft", total=total)
        for step, chosen, epoch in epoch_batches(examples, sft_cfg.batch_size, sft_cfg.epochs, cfg.seed):
            batch = Batch(trajectories=chosen, advantages=[[0.0] * len(t.completion_ids) for t in chosen])
            metrics = learner.step(batch)
            run.log(step, {"sft/loss": metrics["learner/nll"], "sft/epoch": epoch,
                           "sft/grad_norm": metrics["learner/grad_norm"], "sft/lr": metrics["learner/lr"],
                           "sft/tokens_per_s": metrics["learner/tokens_per_s"]})
            progress.update(bar, advance=1, description=f"sft loss {metrics['learner/nll']:.3f}")
            if sft_cfg.time_limit_s and time.perf_counter() - start > sft_cfg.time_limit_s:
                break
    save_adapter(learner.adapter_state(), run.path / "adapter")
    run.finish()
    return run
