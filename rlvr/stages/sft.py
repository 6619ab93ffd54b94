"""`rlvr sft CONFIG`: LoRA supervised fine-tuning on `rlvr synth` conversations, on the RL learner's path.

Conversations are rendered by the ChatRenderer the RL rollouts use: the same chat template, the same tool
format (tools in the system prompt for templates without tool support), OpenAI `tool_calls` written as
the model writes them in a rollout. The loss covers assistant tokens only: each assistant turn's text
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

import json
import math
import random
import time
from pathlib import Path
from typing import Any

from rlvr.core.config import Config, ConfigError
from rlvr.core.contract import Message, Trajectory
from rlvr.rollout.chat import ChatRenderer, rollout_messages


def tokenize_conversation(renderer: ChatRenderer, messages: list[Message], tools: list[dict[str, Any]],
                          max_length: int) -> dict[str, list[int]] | None:
    """input_ids and assistant_masks (1 on assistant tokens) of a conversation, cut after the last assistant
    turn that fits in `max_length`; None when not even the first fits. An assistant message with "weight": 0
    (OpenAI's fine-tuning format; synth writes it on a call the env rejected) is context, masked 0."""
    msgs = rollout_messages(messages, renderer.format)
    ids: list[int] = []
    mask: list[int] = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        weight = messages[i].get("weight", 1)
        prefix = renderer.render_ids(msgs[:i], tools, generation_prompt=True)
        if prefix[: len(ids)] != ids:
            raise ValueError("the chat template rewrites earlier turns as the conversation grows; SFT in the "
                             "rollouts' token format needs an append-only template")
        turn = renderer.render_ids(msgs[: i + 1], tools, generation_prompt=False)[len(prefix):]
        ends = [k for k, t in enumerate(turn) if t == renderer.turn_end_id]
        if not ends:
            raise ValueError("the chat template does not end an assistant turn with its end-of-turn token")
        turn = turn[: ends[0] + 1]  # what a rollout samples: the text and the end-of-turn token
        if len(prefix) + len(turn) > max_length:
            break
        mask += [0] * (len(prefix) - len(ids)) + [weight] * len(turn)
        ids = prefix + turn
    return {"input_ids": ids, "assistant_masks": mask} if ids else None


def load_conversations(path: str, what: str) -> list[dict[str, Any]]:
    """JSON lines with "messages" (and optionally "tools"); a broken line is named with its number."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{what}: {path} line {number} is not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
            raise ConfigError(f"{what}: {path} line {number} has no \"messages\" list")
        bad = [m["weight"] for m in row["messages"] if isinstance(m, dict) and m.get("weight", 1) not in (0, 1)]
        if bad:
            raise ConfigError(f"{what}: {path} line {number}: a message's \"weight\" is 0 or 1, got {bad[0]!r}")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{what}: {path} holds no conversations")
    return rows


def training_rows(cfg: Config, renderer: ChatRenderer) -> list[dict[str, list[int]]]:
    """The tokenized training set: the tool conversations plus a share of general chat (sft.mix_fraction)."""
    sft = cfg.sft
    if not sft.data:
        raise ConfigError("sft.data: give the JSON-lines file written by `rlvr synth`")
    conversations = load_conversations(sft.data, "sft.data")
    if sft.mix_fraction and sft.mix_data:
        general = load_conversations(sft.mix_data, "sft.mix_data")
        want = round(len(conversations) * sft.mix_fraction / (1 - sft.mix_fraction))
        rng = random.Random(cfg.seed)
        conversations += [{"messages": rng.choice(general)["messages"]} for _ in range(want)]
    elif sft.mix_fraction:
        raise ConfigError("sft.mix_fraction > 0 needs sft.mix_data (general chat conversations)")
    rows = [tokenize_conversation(renderer, c["messages"], c.get("tools") or [], sft.max_length) for c in conversations]
    return [r for r in rows if r is not None]


def as_trajectory(number: int, row: dict[str, list[int]]) -> Trajectory:
    """A tokenized conversation as the learner's Trajectory: the prompt is everything before the first
    assistant token, the loss mask is the assistant mask of the rest."""
    mask = row["assistant_masks"]
    first = mask.index(1) if 1 in mask else len(mask)
    if first == 0:
        raise ValueError(f"conversation {number} starts with an assistant token: nothing to condition on")
    ids = row["input_ids"]
    return Trajectory(id=f"sft-{number}", task_id=f"sft-{number}", group_id=f"sft-{number}", prompt_ids=ids[:first],
                      completion_ids=ids[first:], loss_mask=mask[first:], logprobs=[0.0] * (len(ids) - first))


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
    from rlvr.training.models import load_tokenizer

    renderer = ChatRenderer(load_tokenizer(cfg.model.name), cfg.rollout.tool_format)
    examples = [as_trajectory(i, row) for i, row in enumerate(training_rows(cfg, renderer))]  # bad data fails first
    if not any(t.num_sampled_tokens for t in examples):
        raise ConfigError(f"sft.data: {cfg.sft.data} has no assistant turn that fits in sft.max_length")
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
