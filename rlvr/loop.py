"""`rlvr train`: the RL loop, top to bottom, in-process.

    1. sample tasks   2. roll out G per task, each trajectory scored as it ends   3. advantages
    4. learner update   5. serve the new adapter   6. log

Checkpoints every `checkpoint.every` steps; `resume=auto` continues the newest run of the same name
(rlvr/checkpoint.py). Ray rollout workers and evaluation come with issue 5. `data.source=synthetic`
skips rollouts (random scored trajectories): the smoke run, which exercises model loading, advantages,
the learner and the run folder.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import torch

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rlvr.batch import make_batch
from rlvr.checkpoint import find_resumable_run, latest_checkpoint, load_checkpoint, save_checkpoint, truncate_log
from rlvr.config import Config, ConfigError
from rlvr.learner import build_learner
from rlvr.run import Run

console = Console(stderr=True)


def train(cfg: Config) -> Run:
    source = _data_source(cfg)  # env, rewards and tasks resolve before any model loads
    checkpoint = _checkpoint_to_resume(cfg)
    run = Run(cfg, path=checkpoint.parent.parent if checkpoint else None)
    console.print(f"[bold]rlvr[/] run folder: {run.path}")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the LoRA initialisation: the same run twice is the same run
    learner = build_learner(cfg)
    done = 0
    if checkpoint:
        done = load_checkpoint(checkpoint, learner)
        truncate_log(run.metrics_file, done)
        truncate_log(run.tasks_file, done)
        console.print(f"resumed from {checkpoint} (step {done})")
    source.start(learner)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        bar = progress.add_task("rlvr", total=cfg.steps, completed=done)
        for step in range(done + 1, cfg.steps + 1):
            start = time.perf_counter()
            groups, rollout_metrics = source.rollouts(step)  # 1-2. tasks, rollouts and scores
            batch, batch_metrics = make_batch(groups, cfg.algorithm)  # 3. advantages
            metrics = {**rollout_metrics, **batch_metrics, **learner.step(batch)}  # 4. update
            metrics["time/step_s"] = time.perf_counter() - start
            if cfg.eval.every and (step % cfg.eval.every == 0 or step == cfg.steps):
                metrics.update(source.evaluate(step))  # 7. greedy, on held-out tasks
            run.log(step, metrics, [g.task.id for g in groups])  # 6. log (5. in-process: the engine is the learner)
            if cfg.logging.samples_every and step % cfg.logging.samples_every == 0 and cfg.data.source != "synthetic":
                run.write_samples(step, groups)
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
                save_checkpoint(run.path, step, learner, cfg.checkpoint.keep)
            progress.update(bar, advance=1, description=f"reward {metrics['reward/mean']:.3f}  "
                                                        f"{metrics['learner/tokens_per_s']:.0f} tok/s")
            if step % cfg.logging.log_every == 0:
                progress.console.print(f"step {step}/{cfg.steps}  reward {metrics['reward/mean']:.3f}  "
                                       f"loss {metrics['learner/loss']:+.4f}  "
                                       f"{metrics['learner/tokens_per_s']:.0f} tok/s  {metrics['time/step_s']:.1f} s"
                                       + (f"  held-out {metrics['eval/mean']:.3f}" if "eval/mean" in metrics else ""))
    learner.save(run.path / "adapter", with_state=False)
    plot_curves(run.metrics_file, run.path / "curves.png")
    run.finish()
    console.print(f"[green]done[/]: metrics in {run.metrics_file}, adapter in {run.path / 'adapter'}")
    return run


def _checkpoint_to_resume(cfg: Config) -> Path | None:
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        run_path = find_resumable_run(Path(cfg.output_dir), cfg.name)
        return latest_checkpoint(run_path) if run_path else None
    checkpoint = Path(cfg.resume)
    if not (checkpoint / "meta.json").is_file():
        raise ConfigError(f"resume: {checkpoint} is not a complete checkpoint (no meta.json); "
                          "give 'auto', 'never' or a run's checkpoints/step-N directory")
    return checkpoint


def _data_source(cfg: Config):
    """The run's source of scored groups, resolved (env, rewards, tasks) before any model loads."""
    return SyntheticSource(cfg) if cfg.data.source == "synthetic" else EnvSource(cfg)


class SyntheticSource:
    """data.source=synthetic: random scored groups and no rollouts (the smoke run, the learner benchmarks)."""

    def __init__(self, cfg: Config):
        if cfg.eval.every:
            raise ConfigError("eval.every: synthetic data has no held-out tasks to evaluate on")
        self.cfg = cfg

    def start(self, learner) -> None:
        self.vocab = learner.lm_head.weight.shape[0]

    def rollouts(self, step: int):
        from rlvr.synthetic import synthetic_groups

        data = self.cfg.data
        return synthetic_groups(data.tasks_per_step, self.cfg.rollout.group_size, data.synthetic_prompt_tokens,
                                data.synthetic_completion_tokens, self.vocab, seed=self.cfg.seed * 1_000_003 + step), {}


class EnvSource:
    """Tasks from an env's task source (or a file), rolled out with the learner's own model (HF engine),
    each trajectory scored as it ends."""

    def __init__(self, cfg: Config):
        from rlvr.envs.registry import load_env
        from rlvr.plugins import PluginError
        from rlvr.rewards.scoring import Scorer
        from rlvr.tasks import TaskSampler, load_tasks

        if cfg.rollout.engine != "hf":
            raise ConfigError("rollout.engine: the in-process loop samples with the learner's own model "
                              "(engine=hf); vLLM engines come with the Ray loop (issue 5)")
        try:
            self.env = load_env(cfg.env.name)
            self.scorer = Scorer.from_config(cfg.rewards, self.env)
            tasks = load_tasks(cfg.data.source, self.env, cfg.data.train_tasks, cfg.seed, "train", cfg.env.options)
            self.held_out = (self.env.tasks(cfg.eval.tasks, seed=cfg.seed, split="test", **cfg.env.options)
                             if cfg.eval.every else [])
        except (PluginError, ValueError, TypeError, NotImplementedError) as e:
            raise ConfigError(str(e)) from None
        self.sampler = TaskSampler(tasks, cfg.data.tasks_per_step, cfg.seed)
        self.cfg = cfg

    def start(self, learner) -> None:
        from rlvr.chat import ChatRenderer
        from rlvr.engine import HFEngine
        from rlvr.models import load_tokenizer

        self.renderer = ChatRenderer(load_tokenizer(self.cfg.model.name), self.cfg.rollout.tool_format)
        self.engine = HFEngine(learner.model, self.renderer.tokenizer, stop_ids=self.renderer.turn_end_ids)

    def _roll(self, tasks, settings, seed: int, policy_version: int):
        from rlvr.rollout import rollout_groups

        return asyncio.run(rollout_groups(tasks, self.engine, self.renderer, self.env, settings, seed=seed,
                                          policy_version=policy_version, scorer=self.scorer))

    def rollouts(self, step: int):
        start = time.perf_counter()
        groups = self._roll(self.sampler.batch(step), self.cfg.rollout, self.cfg.seed * 1_000_003 + step, step - 1)
        if not groups:
            errors = self.scorer.stats.errors
            raise RuntimeError(f"step {step}: every trajectory was dropped by a failing reward "
                               f"({errors[-1] if errors else 'no error recorded'})")
        return groups, _rollout_metrics(groups, self.scorer, time.perf_counter() - start)

    def evaluate(self, step: int) -> dict[str, float]:
        """One greedy trajectory per held-out task: eval/mean and every reward component."""
        greedy = self.cfg.rollout.model_copy(update={"group_size": 1, "temperature": 0.0})
        groups = self._roll(self.held_out, greedy, self.cfg.seed, step)
        trajectories = [t for g in groups for t in g.trajectories]
        return {**_reward_means(trajectories, "eval"), "eval/tasks": float(len(groups))}


def plot_curves(metrics_file: Path, out: Path) -> None:
    """A PNG of the training reward and, when evaluated, the held-out reward per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["reward/mean"] for r in rows], label="train reward (mean)")
    evals = [r for r in rows if "eval/mean" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval/mean"] for r in evals], "o-", label="held-out reward (greedy)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _rollout_metrics(groups, scorer, seconds: float) -> dict[str, float]:
    trajectories = [t for g in groups for t in g.trajectories]
    sampled = sum(t.num_sampled_tokens for t in trajectories)
    calls = [c for t in trajectories for c in t.tool_calls]
    n = len(trajectories)
    return {"rollout/time_s": seconds, "rollout/sampled_tokens": float(sampled),
            "rollout/tokens_per_s": sampled / seconds if seconds else 0.0,
            "rollout/turns": sum(t.turns for t in trajectories) / n,
            "rollout/tool_calls": len(calls) / n,
            "rollout/tool_errors": sum(c.error is not None for c in calls) / max(len(calls), 1),
            "rollout/finished": sum(t.finish_reason == "stop" for t in trajectories) / n,
            "reward/dropped_trajectories": float(scorer.stats.dropped),
            **_reward_means(trajectories, "reward")}


def _reward_means(trajectories, prefix: str) -> dict[str, float]:
    """<prefix>/mean of the rewards and <prefix>/<name> of every reward component."""
    metrics = {f"{prefix}/mean": sum(t.reward for t in trajectories) / len(trajectories)}
    for name in trajectories[0].reward_components:
        metrics[f"{prefix}/{name}"] = sum(t.reward_components.get(name, 0.0) for t in trajectories) / len(trajectories)
    return metrics
