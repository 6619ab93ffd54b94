"""The quickstart's RL step, part by part, against this machine's limit and against the previous engine.

    python bench/rl_step.py [CONFIG] [key=value ...] [--steps 5] [--init-adapter DIR]

The step is the one `rlvr quickstart CONFIG` trains: GRPO from the SFT adapter (synth + SFT are run once
and cached under the model cache, unless --init-adapter gives one), in process, under the config's tool
conditions. Every step rolls out its tasks twice from the same policy, with the same seeds, alternating
which goes first: with the config's engine (rollout.engine=hf: continuous batching where the model
allows it) and with rollout.engine=hf-generate (transformers' generate, batch by batch: the engine before
it). The learner trains on the first and the policy moves on, so both engines always sample the same policy.
After a warm-up step each step prints its parts (rollout, score: wall time while some trajectory was
being scored, overlapping generation; learner; sync) and the limit on the same tokens:
  engine limit:  the fastest HF engine generating the step's sampled tokens as one batch of its rows
                 (the same number of rows, each forced to the mean length, the step's prompts), no loop;
  learner limit: one forward and backward over the step's batch (no old-policy pass, no optimiser step;
                 the trajectories without advantage left out, as the learner does).
The summary prints medians, step / limit, the rollout of the engine before against the new one (the
learner is the same code in both; its own gains were measured separately, see docs/benchmarks.md), the
learner's share of the CPU's matmul rate in the learner's precision (a GEMM of the model's shapes timed in
the same run) and one decoding pass of each engine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rlvr.core.config import load_config  # noqa: E402
from rlvr.core.protocols import SamplingParams  # noqa: E402
from rlvr.loop import _data_source, _learner  # noqa: E402
from rlvr.rollout.sources import rollout_seed  # noqa: E402
from rlvr.training.advantages import make_batch  # noqa: E402
from rlvr.training.learner import with_advantage  # noqa: E402


def sft_start(cfg, config_path: str, overrides: list[str]) -> str:
    """The config's SFT adapter (synth + SFT as the quickstart runs them), built once and cached."""
    from rlvr.stages.sft import sft
    from rlvr.stages.synth import Synthesizer, write_jsonl
    from rlvr.training.models import cache_dir

    key = hashlib.sha256((Path(config_path).read_text() + repr(sorted(overrides))).encode()).hexdigest()[:12]
    folder = cache_dir() / "bench" / f"rl_step-sft-{key}"
    if (folder / "adapter" / "adapter_config.json").is_file():
        return str(folder / "adapter")
    print(f"building the SFT start once (cached in {folder})")
    folder.mkdir(parents=True, exist_ok=True)
    synthesizer = Synthesizer(cfg)
    write_jsonl(folder / "sft.jsonl", synthesizer.run(synthesizer.tasks()))
    sft_cfg = cfg.model_copy(update={"output_dir": str(folder / "runs")}, deep=True)
    sft_cfg.sft.data = str(folder / "sft.jsonl")
    adapter = sft(sft_cfg).path / "adapter"
    os.replace(adapter, folder / "adapter")
    return str(folder / "adapter")


class Run:
    """A learner, its rollout source (in process, the config's engine) and a second worker with the engine
    before it, sampling with the same model."""

    def __init__(self, cfg):
        from rlvr.rollout.workers import LocalRollouts, RolloutWorker

        self.cfg = cfg
        self.source = _data_source(cfg)
        self.learner = _learner(cfg, None)
        self.source.start(self.learner, version=0)
        before = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"engine": "hf-generate"})},
                                deep=True)
        self.before = LocalRollouts(RolloutWorker(before, model=self.learner.model))
        self.engines = {"hf": self.source.backend.worker.engine, "hf-generate": self.before.worker.engine}

    def step(self, step: int, generate_first: bool):
        """One RL step; returns its parts, its groups and batch, and the rollout seconds of the engine before."""
        tasks, seed = self.source.sampler.batch(step), rollout_seed(self.cfg, step)

        def rollout_before():
            start = time.perf_counter()
            result, = self.before.collect(self.before.submit(tasks, self.cfg.rollout, seed, step - 1))
            return time.perf_counter() - start, sum(t.num_sampled_tokens for g in result.groups for t in g.trajectories)

        if generate_first:
            before = rollout_before()
        start = time.perf_counter()
        groups, metrics = self.source.rollouts(step)
        rollout = time.perf_counter() - start
        if not generate_first:
            before = rollout_before()
        batch, _ = make_batch(groups, self.cfg.algorithm)
        start = time.perf_counter()
        learned = self.learner.step(batch)
        learner = time.perf_counter() - start
        start = time.perf_counter()
        self.source.sync(self.learner, version=step)
        sync = time.perf_counter() - start
        self.before.sync(self.learner, version=step)  # re-merge the updated adapter
        parts = {"rollout": rollout, "score": metrics["time/score_s"], "learner": learner, "sync": sync,
                 "step": rollout + learner + sync, "sampled": metrics["rollout/sampled_tokens"],
                 "learner_tokens": learned.get("learner/tokens", 0.0), "turns": metrics["rollout/turns"],
                 "not_run": learned.get("learner/zero_advantage_trajectories", 0.0),
                 "rollout_before": before[0], "sampled_before": before[1]}
        return parts, groups, batch

    def close(self):
        self.before.close()
        self.source.close()


def timed_generation(engine, prompts: list[list[int]], max_tokens: int) -> float:
    """Seconds for `engine` to generate `max_tokens` tokens for every prompt: no stop token ends a row, and
    no KV is reused from earlier requests (the engine's stop tokens and prefix store are restored/emptied)."""
    stop_ids, engine.stop_ids = engine.stop_ids, type(engine.stop_ids)()
    engine.prefix_store.clear()
    try:
        start = time.perf_counter()
        engine.generate_batch(prompts, [SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=i)
                                        for i in range(len(prompts))])
        return time.perf_counter() - start
    finally:
        engine.stop_ids = stop_ids
        engine.prefix_store.clear()


def engine_limit(engines, groups) -> tuple[float, str]:
    """Seconds for the fastest engine to generate the step's sampled tokens as one batch of its rows (each row
    forced to the mean length, from the step's own prompts), and that engine's name."""
    prompts = [t.prompt_ids for g in groups for t in g.trajectories]
    sampled = sum(t.num_sampled_tokens for g in groups for t in g.trajectories)
    return min((timed_generation(engine, prompts, -(-sampled // len(prompts))), name)
               for name, engine in engines.items())


def learner_limit(learner, batch) -> tuple[float, int]:
    """Seconds of one forward and backward over the batch's trajectories that carry gradient (no old-policy
    pass, no update), and the token positions it computed (shared prompts once, padding included)."""
    counts = learner.batch_counts(batch)
    micro = learner.micro_batches(with_advantage(batch) if learner.skip_zero_advantage else batch)
    positions = sum(mb.input_ids.numel() for mb in micro) + sum(
        mb.prompt.input_ids.numel() for mb in {id(m.prompt): m for m in micro if m.prompt is not None}.values())
    learner.model.train()
    start = time.perf_counter()
    learner.backward(micro, counts)
    seconds = time.perf_counter() - start
    learner.model.eval()
    learner.optimizer.zero_grad(set_to_none=True)
    return seconds, positions


def matmul_rate(model, dtype: torch.dtype) -> float:
    """FLOP/s of this CPU on the model's MLP shape (2048 tokens) in `dtype`, the best of a few runs."""
    config = model.config
    x = torch.randn(2048, config.hidden_size, dtype=dtype)
    w = torch.randn(config.intermediate_size, config.hidden_size, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            torch.nn.functional.linear(x, w)
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * x.shape[0] * w.shape[0] * w.shape[1] / best


def decode_ms(engine, prompts, tokens: int = 33) -> float:
    """Milliseconds of one decoding pass at the batch of `prompts` (prompts prefilled, forced lengths): the
    time for `tokens` tokens a row less the time for one, per extra token."""
    one = timed_generation(engine, prompts, 1)
    return (timed_generation(engine, prompts, tokens) - one) / (tokens - 1) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=5, help="measured steps after one warm-up step")
    parser.add_argument("--init-adapter", default=None)
    args = parser.parse_args()
    overrides = [*args.overrides, "logging.wandb=disabled"]
    cfg = load_config(args.config, overrides)
    adapter = args.init_adapter or sft_start(cfg, args.config, overrides)
    cfg = load_config(args.config, [*overrides, f"model.init_adapter={adapter}", f"steps={args.steps + 1}"])
    run = Run(cfg)
    steps, limits = [], []
    for step in range(1, args.steps + 2):
        parts, groups, batch = run.step(step, generate_first=step % 2 == 0)
        label = "warm-up" if step == 1 else f"step {step - 1}"
        print(f"{label}: " + "  ".join(f"{k} {parts[k]:.1f} s" for k in ("rollout", "score", "learner", "sync", "step"))
              + f"  ({parts['sampled']:.0f} sampled tokens, {parts['turns']:.2f} turns, {parts['not_run']:.0f} "
              f"trajectories without advantage not run); engine before: rollout "
              f"{parts['rollout_before']:.1f} s ({parts['sampled_before']:.0f} sampled tokens)", flush=True)
        if step == 1:
            continue
        steps.append(parts)
        engine_s, engine_name = engine_limit(run.engines, groups)
        learn_s, positions = learner_limit(run.learner, batch)
        limits.append({"engine": engine_s, "learner": learn_s, "total": engine_s + learn_s, "positions": positions})
        print(f"       limit: engine {engine_s:.1f} s ({engine_name}) + learner forward/backward {learn_s:.1f} s "
              f"= {engine_s + learn_s:.1f} s", flush=True)

    new = {k: statistics.median(p[k] for p in steps) for k in steps[0]}
    limit = {k: statistics.median(x[k] for x in limits) for k in limits[0]}
    before_step = new["rollout_before"] + new["learner"] + new["sync"]
    print(f"\nmedians over {args.steps} steps (seconds)")
    print(f"{'':14s}{'rollout':>9s}{'score':>8s}{'learner':>9s}{'sync':>7s}{'step':>8s}")
    print(f"{'new':14s}{new['rollout']:9.1f}{new['score']:8.2f}{new['learner']:9.1f}{new['sync']:7.2f}{new['step']:8.1f}")
    print(f"{'engine before':14s}{new['rollout_before']:9.1f}{'':8s}{'(same)':>9s}{'':7s}{before_step:8.1f}")
    print(f"{'limit':14s}{limit['engine']:9.1f}{'':8s}{limit['learner']:9.1f}{'':7s}{limit['total']:8.1f}")
    # steps whose groups were all flat leave the learner nothing to run: no learner ratio or rate then
    learner_ratio = f"{new['learner'] / limit['learner']:.2f}" if limit["positions"] else "- (nothing to run)"
    print(f"step / limit: {new['step'] / limit['total']:.2f}  (rollout {new['rollout'] / limit['engine']:.2f}, "
          f"learner {learner_ratio})")
    print(f"engine before / new: rollout {new['rollout_before'] / new['rollout']:.2f} (sampled tokens "
          f"{new['sampled_before']:.0f} / {new['sampled']:.0f}), step {before_step / new['step']:.2f}")
    model = run.learner.model.get_base_model()
    dtype = torch.bfloat16 if run.learner.bf16 else torch.float32  # the learner's compute precision
    rate = matmul_rate(model, dtype)
    layer_params = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and "lora_" not in n)
    flops = 4 * layer_params * limit["positions"]  # frozen base: forward 2N, backward (input grads only) 2N
    if limit["positions"]:
        print(f"learner forward/backward: {flops / limit['learner'] / 1e9:.0f} GFLOP/s on the model's layers "
              f"(4 x {layer_params / 1e6:.0f}M x {limit['positions']:.0f} positions), {str(dtype)[6:]} GEMM here "
              f"{rate / 1e9:.0f} GFLOP/s: fraction {flops / limit['learner'] / rate:.2f}")
    prompts = [t.prompt_ids for g in groups for t in g.trajectories]
    for name, engine in run.engines.items():
        print(f"decode pass at batch {len(prompts)} ({name}): {decode_ms(engine, prompts):.0f} ms")
    run.close()


if __name__ == "__main__":
    main()
