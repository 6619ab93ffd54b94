"""QLoRA against a bf16 base: memory of one learner step and the log-prob gap (issue 23).

    python bench/qlora.py [--model qwen2.5-coder-0.5b-instruct] [--sequences 8] [--length 512]
    python bench/qlora.py --random-shape qwen2.5-1.5b --sequences 1 --length 256

`--random-shape` builds a random-initialised model of a larger Qwen2.5's shape (with the real Qwen tokenizer;
memory does not depend on weight values) and measures it instead: in the offline Qwen2.5-Coder-0.5B the
embeddings and the untied LM head, which QLoRA keeps in bf16, are 44% of the weights, so no 4-bit base of it
reaches half the bf16 memory (weights alone floor at 0.59x); in the 3B (tied) they are 10%.

A CPU bench (host memory; on a GPU the figure to read is torch.cuda.max_memory_allocated). Each variant
(model.quantization none or 4bit, LoRA rank 16, bf16 compute) runs in its own process on the same batch:
`--sequences` copies of the repository's README as text, `--length` tokens each. Printed per variant: the
bytes of the model's weights (parameters and buffers, exact), resident memory after loading, and the peak
resident memory while one learner step runs (forward, backward, update; sampled every 5 ms above the
loaded level); then the ratios 4bit / bf16 and the mean absolute difference between the two models'
log-probs on the batch's completion tokens (before the step).

Two ratios, because resident memory on CPU mixes in what is not the step's: importing bitsandbytes adds
~190 MB to the process, and the heap that loading and quantising used stays resident. "Step memory" is what
GPU's max_memory_allocated would count: the weights (exact) plus what the step adds above the resident level
before it (sampled).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def variant(args) -> None:
    import threading
    import time
    from pathlib import Path

    import torch

    from rlvr.core.config import load_config
    from rlvr.core.contract import Batch, Trajectory
    from rlvr.training.algorithms import ObjectiveSpec
    from rlvr.training.learner import Learner, load_policy
    from rlvr.training.models import load_tokenizer

    cfg = load_config(None, [f"model.name={args.model}", f"model.quantization={args.quantization}",
                             "learner.precision=bf16", "learner.mini_batches=1", "learner.device=cpu",
                             f"learner.gradient_checkpointing={args.gradient_checkpointing}"])
    model = load_policy(cfg)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    loaded = rss_mb()
    text = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
    ids = load_tokenizer(args.model).encode(text)[: args.length]
    half = len(ids) // 2
    trajectories = [Trajectory(id=f"t/{i}", task_id="t", group_id="t", prompt_ids=ids[:half], completion_ids=ids[half:],
                               loss_mask=[1] * (len(ids) - half), logprobs=[0.0] * (len(ids) - half),
                               reward=float(i % 2)) for i in range(args.sequences)]
    batch = Batch(trajectories=trajectories,
                  advantages=[[1.0 if i % 2 else -1.0] * (len(ids) - half) for i in range(args.sequences)])
    learner = Learner(model, cfg.learner, ObjectiveSpec())
    with torch.no_grad():
        logp = torch.cat([learner.completion_logprobs(mb).flatten() for mb in learner.micro_batches(batch)])
    peak, running = [rss_mb()], True

    def sample():
        while running:
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    before = rss_mb()
    sampler.start()
    learner.step(batch)
    running = False
    sampler.join()
    torch.save(logp, args.logprobs)
    print(json.dumps({"weights_mb": weights / 2**20, "loaded_mb": loaded, "before_step_mb": before,
                      "step_peak_mb": peak[0]}))


RANDOM_SHAPES = {  # the published configs' shapes (also bench/learner.py's random 1.5B)
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, tie_word_embeddings=True),
}


def random_model(shape: str) -> str:
    """A random-initialised bf16 checkpoint of `shape` with Qwen2.5's tokenizer, built once in the model cache."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlvr.training.models import cached_build, load_tokenizer

    def build(out):
        tokenizer = load_tokenizer("qwen2.5-coder-0.5b-instruct")
        config = AutoConfig.for_model("qwen2", vocab_size=151936, max_position_embeddings=32768,
                                      **RANDOM_SHAPES[shape])
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(out)
        tokenizer.save_pretrained(out)

    return str(cached_build(f"random-{shape}", build))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--random-shape", choices=sorted(RANDOM_SHAPES), default=None,
                        help="measure a random-initialised model of this shape instead of --model")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="both variants recompute layer activations in backward (learner.gradient_checkpointing)")
    parser.add_argument("--quantization", default=None, help=argparse.SUPPRESS)  # set in the child processes
    parser.add_argument("--logprobs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quantization:
        return variant(args)
    import torch

    if args.random_shape:
        args.model = random_model(args.random_shape)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for quantization in ("none", "4bit"):
            out = f"{scratch}/{quantization}.pt"
            done = subprocess.run([sys.executable, __file__, "--model", args.model, "--sequences", str(args.sequences),
                                   "--length", str(args.length), "--quantization", quantization, "--logprobs", out,
                                   *(["--gradient-checkpointing"] if args.gradient_checkpointing else [])],
                                  capture_output=True, text=True, check=True)
            results[quantization] = json.loads(done.stdout.strip().splitlines()[-1])
            results[quantization]["logp"] = torch.load(out)
    print(f"{args.random_shape or args.model}{' (random weights)' if args.random_shape else ''}, one learner step on "
          f"{args.sequences} sequences of {args.length} tokens of text, LoRA rank 16, bf16 compute"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}")
    for name, r in results.items():
        label = "bf16 base" if name == "none" else "4-bit NF4 base"
        print(f"  {label:15s} weights {r['weights_mb']:7.0f} MB; resident after loading {r['loaded_mb']:7.0f} MB, "
              f"before the step {r['before_step_mb']:7.0f} MB, peak during the step {r['step_peak_mb']:7.0f} MB")
    step = {name: r["weights_mb"] + r["step_peak_mb"] - r["before_step_mb"] for name, r in results.items()}
    print(f"weights 4bit / bf16: {results['4bit']['weights_mb'] / results['none']['weights_mb']:.2f}; peak resident "
          f"memory of the step 4bit / bf16: {results['4bit']['step_peak_mb'] / results['none']['step_peak_mb']:.2f}; "
          f"step memory (weights + what the step adds: {step['4bit']:.0f} / {step['none']:.0f} MB) 4bit / bf16: "
          f"{step['4bit'] / step['none']:.2f} (target <= 0.5)")
    gap = (results["4bit"]["logp"] - results["none"]["logp"]).abs().mean().item()
    print(f"mean |log-prob 4bit - log-prob bf16| on the completion tokens: {gap:.4f} nats "
          f"(mean log-prob bf16 {results['none']['logp'].mean().item():.3f})")


if __name__ == "__main__":
    main()
