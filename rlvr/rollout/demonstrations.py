"""Demonstrations in the rollouts' token format: conversations (JSON lines with "messages", OpenAI style, as
`rlvr synth` writes them) rendered by the ChatRenderer the rollouts use, as learner Trajectories whose loss mask
covers exactly the tokens a rollout samples (each assistant turn's text, tool calls included, and its
end-of-turn token). SFT trains on them (rlvr/stages/sft.py), DPO reads its file pairs through them, and an RL
run with `algorithm.sft_coef` > 0 keeps an NLL term on them beside its policy loss (PPO-ptx).
"""

from __future__ import annotations

import json
import random
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


def load_demonstrations(cfg: Config) -> list[Trajectory]:
    """`sft.data` (and its `sft.mix_data` share) tokenized with `cfg.model`'s tokenizer, as Trajectories; a
    ConfigError when the file is missing, broken or holds no assistant turn that fits in sft.max_length."""
    from rlvr.training.models import load_tokenizer

    renderer = ChatRenderer(load_tokenizer(cfg.model.name), cfg.rollout.tool_format)
    examples = [as_trajectory(i, row) for i, row in enumerate(training_rows(cfg, renderer))]
    if not any(t.num_sampled_tokens for t in examples):
        raise ConfigError(f"sft.data: {cfg.sft.data} has no assistant turn that fits in sft.max_length")
    return examples
