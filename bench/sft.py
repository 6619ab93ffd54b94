"""SFT speed: rlvr's SFT (the learner with the NLL objective) against TRL's SFTTrainer and against the learner's
RL step, on the same conversations.

    python bench/sft.py [CONFIG] [--rounds 3] [--steps 3]

The conversations are the config's `rlvr synth` gold conversations (the quickstart's SFT data), tokenized
as `rlvr sft` tokenizes them. Each round times, alternating which goes first:
  rlvr sft:     `sft.batch_size` conversations per optimiser step, NLL on the assistant tokens;
  TRL:          SFTTrainer on the same rows (its collator and loss, LoRA of the same shape, bf16 autocast
                where the CPU has bf16 instructions, as `rlvr sft`), as `rlvr sft` ran before it moved onto
                the learner;
  learner (RL): the same conversations as trajectories of one GRPO step (advantages +-1), one update.
Tokens/s count every token of the conversations (prompt and completion), as bench/learner.py does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rlvr.core.config import load_config  # noqa: E402


def main() -> None:
    from rlvr.core.contract import Batch
    from rlvr.rollout.chat import ChatRenderer
    from rlvr.rollout.demonstrations import as_trajectory, training_rows
    from rlvr.stages.synth import Synthesizer, write_jsonl
    from rlvr.training.algorithms import ObjectiveSpec, nll_objective
    from rlvr.training.learner import Learner, use_bf16
    from rlvr.training.models import add_lora, load_model, load_tokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/quickstart.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps timed per round and variant")
    args = parser.parse_args()
    work = tempfile.mkdtemp()
    cfg = load_config(args.config, [f"sft.data={work}/sft.jsonl", f"output_dir={work}", "logging.wandb=disabled"])
    synthesizer = Synthesizer(cfg)
    write_jsonl(f"{work}/sft.jsonl", synthesizer.run(synthesizer.tasks()))
    renderer = ChatRenderer(load_tokenizer(cfg.model.name), cfg.rollout.tool_format)
    rows = training_rows(cfg, renderer)
    size = cfg.sft.batch_size
    batches = [rows[i : i + size] for i in range(0, size * args.steps, size)]
    tokens = sum(len(r["input_ids"]) for b in batches for r in b)
    print(f"{len(rows)} conversations, {args.steps} steps of {size}: {tokens} tokens "
          f"({tokens / args.steps / size:.0f} a conversation)")

    bf16 = use_bf16(cfg.learner.precision, torch.device("cpu"))  # as `rlvr sft` decides, for every variant

    def policy():
        torch.manual_seed(cfg.seed)
        return add_lora(load_model(cfg.model.name, dtype=torch.bfloat16 if bf16 else torch.float32), cfg.model.lora)

    def as_batch(chunk, advantage):
        examples = [as_trajectory(i, r) for i, r in enumerate(chunk)]
        return Batch(trajectories=examples, advantages=[[advantage(i)] * len(t.completion_ids)
                                                         for i, t in enumerate(examples)])

    def run_learner(objective):
        learner = Learner(policy(), cfg.learner.model_copy(update={"lr": cfg.sft.lr, "mini_batches": 1}),
                          ObjectiveSpec(), objective=objective)
        learner.step(as_batch(batches[0], lambda i: 1.0))  # warm-up
        start = time.perf_counter()
        for chunk in batches:
            learner.step(as_batch(chunk, lambda i: 1.0 if i % 2 else -1.0))
        return time.perf_counter() - start

    def run_trl():
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import SFTConfig, SFTTrainer

        seconds = []

        class Clock(TrainerCallback):
            def on_step_begin(self, *a, **k):
                self.start = time.perf_counter()

            def on_step_end(self, *a, **k):
                seconds.append(time.perf_counter() - self.start)

        data = [r for b in batches for r in b]
        trainer = SFTTrainer(model=policy(), train_dataset=Dataset.from_list([batches[0][0], *data]),
                             processing_class=renderer.tokenizer, callbacks=[Clock()],
                             args=SFTConfig(output_dir=f"{work}/trl", max_steps=args.steps + 1, learning_rate=cfg.sft.lr,
                                            per_device_train_batch_size=size, max_length=cfg.sft.max_length,
                                            report_to="none", save_strategy="no", bf16=bf16, use_cpu=True,
                                            dataloader_num_workers=0, disable_tqdm=True, logging_steps=1))
        trainer.train()
        return sum(seconds[1:])  # the first step warms up

    variants = {"rlvr sft": lambda: run_learner(lambda counts, logp, mb: nll_objective(counts, logp, mb.mask)),
                "TRL SFTTrainer": run_trl, "learner (RL)": lambda: run_learner(None)}
    times = {name: [] for name in variants}
    for r in range(args.rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            times[name].append(variants[name]())
            print(f"round {r + 1} {name}: {tokens / times[name][-1]:.0f} tokens/s", flush=True)
    rate = {name: tokens / statistics.median(t) for name, t in times.items()}
    print()
    for name, value in rate.items():
        print(f"{name:16s} {value:7.0f} tokens/s")
    print(f"rlvr sft / learner (RL): {rate['rlvr sft'] / rate['learner (RL)']:.2f}; "
          f"rlvr sft / TRL: {rate['rlvr sft'] / rate['TRL SFTTrainer']:.2f}")


if __name__ == "__main__":
    main()
