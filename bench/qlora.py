"""QLoRA against a bf16 base: peak memory of one learner step and the log-prob gap (issue 23).

    python bench/qlora.py [--model qwen2.5-coder-0.5b-instruct] [--sequences 8] [--length 512]

A CPU bench (host memory; on a GPU the figure to read is torch.cuda.max_memory_allocated). Each variant runs
in its own process (peak resident memory only grows): load the policy (model.quantization
none or 4bit, LoRA rank 16), then one learner step (a forward and backward, GRPO loss) on the same random
batch. Printed per variant: resident memory after the imports, after loading, and at the peak, and what
the model and the step added to the post-import baseline; then the ratio 4bit / bf16 of that added memory
(target <= 0.5) and the mean absolute difference between the two models' log-probs on the batch's
completion tokens (before the step).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def variant(args) -> None:
    import torch

    from rlvr.core.config import load_config
    from rlvr.core.contract import Batch, Trajectory
    from rlvr.training.learner import Learner, load_policy
    from rlvr.training.algorithms import ObjectiveSpec

    baseline = rss_mb()
    cfg = load_config(None, [f"model.name={args.model}", f"model.quantization={args.quantization}",
                             "learner.precision=bf16", "learner.mini_batches=1", "learner.device=cpu"])
    model = load_policy(cfg)
    loaded = rss_mb()
    g = torch.Generator().manual_seed(0)
    vocab = model.get_base_model().config.vocab_size
    prompt = torch.randint(100, vocab - 100, (args.length // 2,), generator=g).tolist()
    trajectories = [Trajectory(id=f"t/{i}", task_id="t", group_id="t", prompt_ids=prompt,
                               completion_ids=torch.randint(100, vocab - 100, (args.length // 2,), generator=g).tolist(),
                               loss_mask=[1] * (args.length // 2), logprobs=[0.0] * (args.length // 2),
                               reward=float(i % 2)) for i in range(args.sequences)]
    batch = Batch(trajectories=trajectories,
                  advantages=[[1.0 if i % 2 else -1.0] * (args.length // 2) for i in range(args.sequences)])
    learner = Learner(model, cfg.learner, ObjectiveSpec())
    with torch.no_grad():
        logp = torch.cat([learner.completion_logprobs(mb).flatten() for mb in learner.micro_batches(batch)])
    learner.step(batch)
    torch.save(logp, args.logprobs)
    print(json.dumps({"baseline_mb": baseline, "loaded_mb": loaded, "peak_mb": peak_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--quantization", default=None, help=argparse.SUPPRESS)  # set in the child processes
    parser.add_argument("--logprobs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quantization:
        return variant(args)
    import torch

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for quantization in ("none", "4bit"):
            out = f"{scratch}/{quantization}.pt"
            done = subprocess.run([sys.executable, __file__, "--model", args.model, "--sequences", str(args.sequences),
                                   "--length", str(args.length), "--quantization", quantization, "--logprobs", out],
                                  capture_output=True, text=True, check=True)
            results[quantization] = json.loads(done.stdout.strip().splitlines()[-1])
            results[quantization]["logp"] = torch.load(out)
    print(f"{args.model}, one learner step on {args.sequences} sequences of {args.length} tokens, LoRA rank 16, bf16 compute")
    for name, r in results.items():
        r["added_mb"] = r["peak_mb"] - r["baseline_mb"]
        label = "bf16 base" if name == "none" else "4-bit NF4 base"
        print(f"  {label:15s} after imports {r['baseline_mb']:7.0f} MB, loaded {r['loaded_mb']:7.0f} MB, peak "
              f"{r['peak_mb']:7.0f} MB; added by the model and the step {r['added_mb']:7.0f} MB")
    ratio = results["4bit"]["added_mb"] / results["none"]["added_mb"]
    gap = (results["4bit"]["logp"] - results["none"]["logp"]).abs().mean().item()
    print(f"peak memory 4bit / bf16 (added over the baseline): {ratio:.2f} (target <= 0.5); whole process "
          f"{results['4bit']['peak_mb'] / results['none']['peak_mb']:.2f}")
    print(f"mean |log-prob 4bit - log-prob bf16| on the completion tokens: {gap:.4f}")


if __name__ == "__main__":
    main()
