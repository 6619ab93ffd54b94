"""`rlvr sft CONFIG`: LoRA supervised fine-tuning with TRL's SFTTrainer on `rlvr synth` conversations.

Conversations are rendered by the ChatRenderer the RL rollouts use: the same chat template, the same tool
format (tools in the system prompt for templates without tool support), OpenAI `tool_calls` written as
the model writes them in a rollout. The loss covers assistant tokens only: each assistant turn's text
(tool calls included) and its end-of-turn token, which are exactly the tokens a rollout samples; the
prompt, tool results and the template's headers between turns are masked (`assistant_masks`, which TRL
turns into labels). With `model.init_adapter` set, training continues that adapter. The adapter is the starting policy of `rlvr train` (`model.init_adapter`); the KL
reference stays the base model (the adapter disabled).
"""

from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlvr.rollout.chat import ChatRenderer, rollout_messages
from rlvr.core.config import Config, ConfigError
from rlvr.core.contract import Message


def tokenize_conversation(renderer: ChatRenderer, messages: list[Message], tools: list[dict[str, Any]],
                          max_length: int) -> dict[str, list[int]] | None:
    """input_ids and assistant_masks (1 on assistant tokens) of a conversation, cut after the last assistant
    turn that fits in `max_length`; None when not even the first fits."""
    msgs = rollout_messages(messages, renderer.format)
    ids: list[int] = []
    mask: list[int] = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
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
        mask += [0] * (len(prefix) - len(ids)) + [1] * len(turn)
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


@contextmanager
def _score_assistant_tokens_only():
    """TRL's fused LM head projects only the positions with a label where Triton runs (CUDA, XPU) and every
    position elsewhere, to keep tile shapes fixed for compilers such as Neuron's. On CPU that is pure waste: a
    tool conversation is mostly masked prompt (system prompt, tool schemas, tool results), and scoring it all
    made an SFT step 1.8x as long here (SmolLM2-135M, 8 conversations: 25 s vs 14 s, the same losses)."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:  # a TRL without this switch: nothing to do
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def sft(cfg: Config):
    """Fine-tune, save the adapter into a run folder `<output_dir>/<name>-sft-<time>/adapter`; returns the Run."""
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from rlvr.training.learner import resolve_device
    from rlvr.training.models import add_lora, bf16_supported, load_model, load_tokenizer
    from rlvr.run import Run

    renderer = ChatRenderer(load_tokenizer(cfg.model.name), cfg.rollout.tool_format)
    rows = training_rows(cfg, renderer)  # bad data fails before the model loads
    run = Run(cfg.model_copy(update={"name": f"{cfg.name}-sft"}))
    device = resolve_device(cfg.learner.device)
    bf16 = bf16_supported(device) and cfg.learner.precision != "fp32"
    lora = cfg.model.lora
    sft_cfg = cfg.sft

    class Log(TrainerCallback):
        """Training metrics into the run's metrics.jsonl; stops at sft.time_limit_s of training."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                run.log(state.global_step, {f"sft/{k}": float(v) for k, v in logs.items() if isinstance(v, (int, float))})

        def on_step_end(self, args, state, control, **kwargs):
            if sft_cfg.time_limit_s and time.perf_counter() - self.start > sft_cfg.time_limit_s:
                control.should_training_stop = True

    args = SFTConfig(
        output_dir=str(run.path / "trainer"), num_train_epochs=sft_cfg.epochs, learning_rate=sft_cfg.lr,
        per_device_train_batch_size=sft_cfg.batch_size, max_length=sft_cfg.max_length, lr_scheduler_type="constant",
        logging_steps=1, save_strategy="no", report_to="none", seed=cfg.seed, bf16=bf16,
        gradient_checkpointing=False,  # small models: recomputing activations costs more than it saves
        use_cpu=device.type == "cpu", dataloader_num_workers=0, disable_tqdm=False)
    model = load_model(cfg.model.name, device=device)
    if cfg.model.init_adapter:  # continue training an adapter (e.g. more SFT from an SFT result)
        model, peft_config = add_lora(model, lora, cfg.model.init_adapter), None
    else:
        peft_config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                     target_modules=lora.target_modules, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=renderer.tokenizer, callbacks=[Log()], peft_config=peft_config)
    with _score_assistant_tokens_only():
        trainer.train()
    trainer.model.save_pretrained(run.path / "adapter")
    run.finish()
    return run
