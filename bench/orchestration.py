"""The Ray loop's own costs: adapter sync latency, and a step's time breakdown in-process vs on Ray.

    python bench/orchestration.py                  # both, SmolLM2-135M-Instruct, LoRA r=16, CPU
    python bench/orchestration.py --only sync      # sync latency only (add --engine vllm for vLLM)
    python bench/orchestration.py --only steps --steps 4 --rounds 2

1. sync: after a learner step (the learner actor's `step` has returned), the time until every rollout
   worker serves the new adapter: the learner actor copies the LoRA tensors to CPU, Ray moves them
   through the object store (no shared filesystem), the worker loads them into its engine. Median of
   `--syncs` repetitions; also the adapter's size.
2. steps: the same run (calculator tasks, SmolLM2, G=4, 2 tasks per step, up to 96 new tokens per turn,
   2 turns) in-process (ray.enabled=false) and on a local Ray (learner actor + 1 rollout worker),
   alternating `--rounds` times; median over the steps after the first of each run of rollout / score
   (overlaps rollout) / learner / sync / other, and Ray's overhead on the whole step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from rlvr.core.config import load_config  # noqa: E402

MODEL = "smollm2-135m-instruct"
SHAPE = [f"model.name={MODEL}", "model.lora.rank=16", "model.lora.alpha=32", "env.name=calculator",
         "data.tasks_per_step=2", "data.train_tasks=64", "rollout.group_size=4", "rollout.max_new_tokens=96",
         "rollout.max_turns=2", "learner.lr=1e-4", "logging.wandb=disabled", "logging.samples_every=0"]


def bench_sync(engine: str, syncs: int) -> None:
    from rlvr.training.advantages import make_batch
    from rlvr.distributed import RayRollouts, RemoteLearner, start_ray
    from rlvr.training.synthetic import synthetic_groups

    cfg = load_config(None, SHAPE + ["ray.enabled=true", f"rollout.engine={engine}"])
    stop_ray = start_ray(cfg.ray, 1)
    learner, rollouts = RemoteLearner(cfg), RayRollouts(cfg)
    batch, _ = make_batch(synthetic_groups(1, 2, 32, 16, vocab_size=49152, seed=0), cfg.algorithm)
    adapter = learner.adapter_state()
    latencies = []
    for version in range(1, syncs + 1):
        learner.step(batch)  # returns when the step has ended
        start = time.perf_counter()
        rollouts.sync(learner, version, wait=True)
        latencies.append(time.perf_counter() - start)
    [result] = rollouts.collect(rollouts.submit(_one_task(), cfg.rollout.model_copy(update={"max_new_tokens": 1}),
                                                seed=0, min_version=syncs))
    assert result.version == syncs
    rollouts.close()
    stop_ray()
    print(f"adapter: {len(adapter.tensors)} tensors, {adapter.nbytes / 2**20:.1f} MiB (float32, r=16, all linear layers)")
    print(f"sync latency ({engine} engine), learner step end -> every worker serving the new version: "
          f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms over {syncs}")


def _one_task():
    from rlvr.envs.calculator import calculator_tasks

    return calculator_tasks(1, seed=1)


def _run(ray_enabled: bool, steps: int, output_dir: str) -> list[dict]:
    from rlvr.loop import train

    cfg = load_config(None, SHAPE + [f"steps={steps}", f"output_dir={output_dir}", f"ray.enabled={ray_enabled}"])
    run = train(cfg)
    return [json.loads(line) for line in run.metrics_file.read_text().splitlines()][1:]  # the first warms up


def bench_steps(steps: int, rounds: int) -> None:
    rows = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for mode in ("local", "ray"):
                rows[mode] += _run(mode == "ray", steps, f"{tmp}/{mode}-{r}")
    parts = ("rollout", "score", "learner", "sync")
    print(f"\nstep breakdown, median of {len(rows['local'])} steps per mode (s):")
    print(f"{'mode':6} {'step':>7} " + " ".join(f"{p:>8}" for p in parts) + f" {'other':>7} {'tokens':>7}")
    medians = {}
    for mode, rs in rows.items():
        med = {p: statistics.median(r.get(f"time/{p}_s", 0.0) for r in rs) for p in parts + ("step",)}
        other = statistics.median(r["time/step_s"] - sum(r.get(f"time/{p}_s", 0.0) for p in ("rollout", "learner", "sync"))
                                  for r in rs)
        tokens = statistics.median(r["rollout/sampled_tokens"] for r in rs)
        medians[mode] = med
        print(f"{mode:6} {med['step']:7.2f} " + " ".join(f"{med[p]:8.2f}" for p in parts) + f" {other:7.2f} {tokens:7.0f}")
    overhead = medians["ray"]["step"] / medians["local"]["step"] - 1
    print(f"Ray overhead on the step: {overhead * 100:+.1f}% (goal < 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["sync", "steps"])
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--syncs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if args.only in (None, "sync"):
        bench_sync(args.engine, args.syncs)
    if args.only in (None, "steps"):
        bench_steps(args.steps, args.rounds)


if __name__ == "__main__":
    main()
