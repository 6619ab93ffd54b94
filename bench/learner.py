"""Learner throughput and peak memory for one RL step: rlvr's plain and shared-prefix paths (with and
without the KL reference pass) and TRL's GRPO loss path on the same batch, each in its own process so
peak memory is its own.

    python bench/learner.py                        # CPU: SmolLM2-135M, LoRA r=16, 16 sequences of ~256 tokens
    python bench/learner.py --model qwen2-1.5b-random --device cuda   # GPU: random-init 1.5B Qwen2 in bf16
    python bench/learner.py --variants plain,shared --prompt-tokens 300 --completion-tokens 85   # G=8 groups
    python bench/learner.py --variants plain,shared --prompt-tokens 300 --completion-tokens 200 --turns 4

Tokens/s counts every token of every sequence (prompt + completion) per optimiser step, median of the
timed steps after one warm-up step. Peak memory: on CPU the process's peak resident set during the
steps (warm-up included) minus its size before them (Linux VmHWM, reset through /proc/self/clear_refs); on GPU
torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

VARIANTS = {
    "plain": "rlvr plain packed path, beta=0",
    "plain+ref": "rlvr plain packed path, beta=0.04 (reference pass, adapter disabled)",
    "shared": "rlvr shared-prefix path, beta=0",
    "shared+ref": "rlvr shared-prefix path, beta=0.04",
    "trl": "TRL GRPOTrainer._compute_loss, beta=0 (padded batch)",
}


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


class PeakMemory:
    def __init__(self, device):
        self.device = device

    def start(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = _rss_kb("VmRSS") * 1024

    def peak_over_start_mb(self) -> float:
        import torch

        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (_rss_kb("VmHWM") * 1024 - self.base) / 2**20


def _base_model(args, dtype, device):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from qlora import RANDOM_SHAPES  # bench/qlora.py: the published shapes, one copy
    from rlvr.training.models import load_model

    if args.model == "qwen2-1.5b-random":
        config = AutoConfig.for_model("qwen2", vocab_size=151936, max_position_embeddings=4096,
                                      **RANDOM_SHAPES["qwen2.5-1.5b"])
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    return load_model(args.model, dtype=dtype, device=device)


def worker(args) -> dict:
    import torch

    from rlvr.training.algorithms import ObjectiveSpec
    from rlvr.training.advantages import make_batch
    from rlvr.core.config import AlgorithmConfig, LearnerConfig, LoraConfig
    from rlvr.training.learner import Learner, use_bf16, resolve_device
    from rlvr.training.models import add_lora
    from rlvr.training.synthetic import synthetic_groups

    torch.manual_seed(0)
    device = resolve_device(args.device)
    bf16 = use_bf16("auto", device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    base = _base_model(args, dtype, device)
    vocab = base.get_output_embeddings().weight.shape[0]
    groups = synthetic_groups(args.sequences // args.group_size, args.group_size, args.prompt_tokens,
                              args.completion_tokens, vocab, turns=args.turns, seed=1)
    batch, _ = make_batch(groups, AlgorithmConfig())
    lora = LoraConfig(rank=16, alpha=32)
    if args.variant != "trl":
        beta = 0.04 if args.variant.endswith("+ref") else 0.0
        cfg = LearnerConfig(micro_batch_tokens=args.micro_batch_tokens, shared_prefix=args.variant.startswith("shared"))
        learner = Learner(add_lora(base, lora), cfg, ObjectiveSpec(beta=beta), total_steps=args.steps + 1)
        micro = learner.micro_batches(batch)
        assert all((mb.prompt is not None) == cfg.shared_prefix for mb in micro), "shared path not taken"
        step = lambda: learner.step(batch)  # noqa: E731
    else:
        step = _trl_step(base, lora, batch, bf16, device, args)
    memory = PeakMemory(device)
    memory.start()  # before the warm-up: allocator caches would hide its allocations from later steps
    step()  # warm-up
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"variant": args.variant, "tokens": batch.num_tokens, "step_s": median,
            "tokens_per_s": batch.num_tokens / median, "peak_mb": memory.peak_over_start_mb(),
            "dtype": str(dtype).removeprefix("torch."), "device": device.type}


def _trl_step(base, lora, batch, bf16, device, args):
    """One optimiser step through TRL's GRPO loss: its model patching, padded batch, fused log-probs."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from trl import GRPOConfig, GRPOTrainer

    trainer = GRPOTrainer(
        model=base,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(batch.trajectories),
                        num_generations=args.group_size, max_completion_length=args.completion_tokens,
                        beta=0.0, loss_type="dapo", bf16=bf16, use_cpu=device.type == "cpu", report_to=[],
                        learning_rate=2e-5, logging_steps=1),
        train_dataset=Dataset.from_dict({"prompt": ["x"] * len(batch.trajectories)}),
        peft_config=PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules="all-linear",
                                   task_type="CAUSAL_LM"),
    )
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which this bench does not run
    trajectories = batch.trajectories
    width = max(len(t.completion_ids) for t in trajectories)
    prompt_width = max(len(t.prompt_ids) for t in trajectories)

    def rows(values, pad, left=False):
        return torch.tensor([[pad] * (prompt_width - len(v)) + v if left else v + [pad] * (width - len(v))
                             for v in values], device=device)

    inputs = {
        "prompt_ids": rows([t.prompt_ids for t in trajectories], 0, left=True),
        "prompt_mask": rows([[1] * len(t.prompt_ids) for t in trajectories], 0, left=True),
        "completion_ids": rows([t.completion_ids for t in trajectories], 0),
        "completion_mask": rows([[1] * len(t.completion_ids) for t in trajectories], 0),
        "tool_mask": rows([t.loss_mask for t in trajectories], 0),
        "advantages": torch.tensor([a[0] for a in batch.advantages], device=device),
        "num_items_in_batch": torch.tensor(float(batch.num_sampled_tokens), device=device),
    }
    model = trainer.model
    model.train()

    def step():
        trainer.optimizer.zero_grad(set_to_none=True)
        loss = trainer._compute_loss(model, inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        trainer.optimizer.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=160)
    parser.add_argument("--completion-tokens", type=int, default=128, help="completions vary in [1/2, 1] x this")
    parser.add_argument("--turns", type=int, default=1, help="turns per trajectory (tool results between them)")
    parser.add_argument("--micro-batch-tokens", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", default="plain,plain+ref,trl")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each variant, alternating; medians reported")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):  # variants alternate, so a slow spell of the machine hits each of them
        for variant in args.variants.split(","):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{variant}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs.setdefault(variant, []).append(r)
            print(f"{variant:9s} {r['tokens_per_s']:8.1f} tokens/s  {r['step_s']:6.2f} s/step  "
                  f"peak +{r['peak_mb']:7.0f} MiB  ({r['tokens']} tokens, {r['dtype']}, {r['device']})  "
                  f"{VARIANTS[variant]}", flush=True)
    results = [{**rs[0], "step_s": statistics.median(r["step_s"] for r in rs),
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                "peak_mb": max(r["peak_mb"] for r in rs)} for rs in runs.values()]
    if args.rounds > 1:
        print(f"medians over {args.rounds} rounds:")
        for r in results:
            print(f"{r['variant']:9s} {r['tokens_per_s']:8.1f} tokens/s  {r['step_s']:6.2f} s/step")
    by = {r["variant"]: r for r in results}
    for path in ("plain", "shared"):
        if path in by and f"{path}+ref" in by:
            a, b = by[path], by[f"{path}+ref"]
            print(f"{path}: the reference pass adds {100 * (b['peak_mb'] / a['peak_mb'] - 1):.1f}% peak memory, "
                  f"{100 * (a['tokens_per_s'] / b['tokens_per_s'] - 1):.1f}% time")
    if "plain" in by and "trl" in by:
        print(f"rlvr plain / TRL tokens/s: {by['plain']['tokens_per_s'] / by['trl']['tokens_per_s']:.2f}x")
    if "plain" in by and "shared" in by:
        print(f"shared / plain tokens/s: {by['shared']['tokens_per_s'] / by['plain']['tokens_per_s']:.2f}x "
              f"(peak memory {by['shared']['peak_mb']:.0f} vs {by['plain']['peak_mb']:.0f} MiB)")


if __name__ == "__main__":
    main()
