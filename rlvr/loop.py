"""`rlvr train`: the RL loop, top to bottom, in-process or on Ray.

    1. sample tasks   2. roll out G per task, each trajectory scored as it ends   3. advantages
    4. learner update   5. the engines serve the new adapter   6. log   7. evaluate on held-out tasks

With `ray.enabled=false` all of it runs in this process (the HF engine samples with the learner's own
model, so a debugger steps through everything); with `ray.enabled=true` the learner and the rollout
workers are Ray actors (rlvr/distributed.py) and the same loop calls them the same way.
Checkpoints every `checkpoint.every` steps; `resume=auto` continues the newest run of the same name
(rlvr/checkpoint.py). `data.source=synthetic` skips rollouts (random scored trajectories): the smoke
run, which exercises model loading, advantages, the learner and the run folder.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rlvr.batch import make_batch
from rlvr.checkpoint import (find_resumable_run, latest_checkpoint, load_checkpoint, prune_checkpoints, save_adapter,
                             save_checkpoint, truncate_log)
from rlvr.config import Config, ConfigError, check_training
from rlvr.learner import build_learner, resolve_device
from rlvr.run import Run

console = Console(stderr=True)


def train(cfg: Config) -> Run:
    check_training(cfg)
    source = _data_source(cfg)  # env, rewards and tasks resolve before any model loads
    checkpoint = _checkpoint_to_resume(cfg)
    run = Run(cfg, path=checkpoint.parent.parent if checkpoint else None)
    console.print(f"[bold]rlvr[/] run folder: {run.path}")
    stop_ray = _start_ray(cfg)
    try:
        learner = _learner(cfg)
        done = 0
        if checkpoint:
            done, state = load_checkpoint(checkpoint)
            learner.load_state_dict(state)
            truncate_log(run.metrics_file, done)
            truncate_log(run.tasks_file, done)
            prune_checkpoints(run.path, cfg.checkpoint.keep, newest=done)
            console.print(f"resumed from {checkpoint} (step {done})")
        source.start(learner, version=done)
        _steps(cfg, run, learner, source, done)
        save_adapter(learner.adapter_state(cfg.steps), run.path / "adapter")  # atomically, like checkpoints
    finally:
        source.close()
        stop_ray()
    plot_curves(run.metrics_file, run.path / "curves.png")
    run.finish()
    console.print(f"[green]done[/]: metrics in {run.metrics_file}, adapter in {run.path / 'adapter'}")
    return run


def _steps(cfg: Config, run: Run, learner, source, done: int) -> None:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        bar = progress.add_task("rlvr", total=cfg.steps, completed=done)
        for step in range(done + 1, cfg.steps + 1):
            timer = Timer()
            with timer("rollout"):
                groups, metrics = source.rollouts(step)  # 1-2. tasks, rollouts and their scores
            batch, batch_metrics = make_batch(groups, cfg.algorithm)  # 3. advantages
            with timer("learner"), source.engines_asleep():  # (on one GPU the engines sleep meanwhile)
                metrics |= batch_metrics | learner.step(batch)  # 4. update
            with timer("sync"):
                source.sync(learner, version=step)  # 5. the engines serve policy v{step}
            if cfg.eval.every and (step % cfg.eval.every == 0 or step == cfg.steps):
                with timer("eval"):
                    metrics |= source.evaluate(step)  # 7. greedy, on held-out tasks
            metrics |= timer.metrics()
            run.log(step, metrics, [g.task.id for g in groups])  # 6. log
            if cfg.logging.samples_every and step % cfg.logging.samples_every == 0 and cfg.data.source != "synthetic":
                run.write_samples(step, groups)
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
                save_checkpoint(run.path, step, learner.state_dict(), cfg.checkpoint.keep)
            learned = ("no update: every group's rewards were equal" if "learner/skipped" in metrics else
                       f"loss {metrics['learner/loss']:+.4f}  {metrics['learner/tokens_per_s']:.0f} tok/s")
            progress.update(bar, advance=1, description=f"reward {metrics['reward/mean']:.3f}")
            if step % cfg.logging.log_every == 0:
                progress.console.print(f"step {step}/{cfg.steps}  reward {metrics['reward/mean']:.3f}  {learned}  "
                                       f"{metrics['time/step_s']:.1f} s"
                                       + (f"  held-out {metrics['eval/mean']:.3f}" if "eval/mean" in metrics else ""))


class Timer:
    """Wall time of the named parts of a step: time/<name>_s, and time/step_s since it was made."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {**{f"time/{k}_s": v for k, v in self.seconds.items()}, "time/step_s": time.perf_counter() - self.start}


def _start_ray(cfg: Config):
    """Start or join Ray when enabled; returns what stops it again (a no-op when it was running already)."""
    if not cfg.ray.enabled:
        return lambda: None
    from rlvr.distributed import start_ray

    return start_ray(cfg.ray, cfg.ray.rollout_workers)


def _learner(cfg: Config):
    if cfg.ray.enabled:
        from rlvr.distributed import RemoteLearner

        return RemoteLearner(cfg)
    return build_learner(cfg)


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

    def start(self, learner, version: int) -> None:
        from transformers import AutoConfig

        from rlvr.models import resolve_model

        self.vocab = AutoConfig.from_pretrained(resolve_model(self.cfg.model.name)).vocab_size

    def rollouts(self, step: int):
        from rlvr.synthetic import synthetic_groups

        data = self.cfg.data
        return synthetic_groups(data.tasks_per_step, self.cfg.rollout.group_size, data.synthetic_prompt_tokens,
                                data.synthetic_completion_tokens, self.vocab, seed=self.cfg.seed * 1_000_003 + step), {}

    def engines_asleep(self):
        return nullcontext()

    def sync(self, learner, version: int) -> None:
        pass

    def close(self) -> None:
        pass


class EnvSource:
    """Tasks from an env's task source (or a file), rolled out by rollout workers (in-process: one, with the
    learner's own model under the HF engine; on Ray: `ray.rollout_workers` actors), each trajectory scored
    as it ends. With ray.max_staleness = s, the rollouts of the next s steps are sent before the learner
    trains on this one."""

    def __init__(self, cfg: Config):
        from rlvr.envs.registry import load_env
        from rlvr.plugins import PluginError
        from rlvr.rewards.scoring import Scorer
        from rlvr.tasks import TaskSampler, load_tasks

        try:
            self.env = load_env(cfg.env.name)
            Scorer.from_config(cfg.rewards, self.env)  # fail on a bad reward now, not in a worker
            tasks = load_tasks(cfg.data.source, self.env, cfg.data.train_tasks, cfg.seed, "train", cfg.env.options)
            self.held_out = (self.env.tasks(cfg.eval.tasks, seed=cfg.seed, split="test", **cfg.env.options)
                             if cfg.eval.every else [])
        except (PluginError, ValueError, TypeError, NotImplementedError) as e:
            raise ConfigError(str(e)) from None
        self.sampler = TaskSampler(tasks, cfg.data.tasks_per_step, cfg.seed)
        self.sleep = _engines_share_the_learner_gpu(cfg)
        if self.sleep and cfg.ray.max_staleness:
            raise ConfigError("ray.max_staleness: the engines and the learner share one GPU, so rollouts cannot "
                              "overlap learner steps; use 0")
        self.cfg = cfg
        self.backend = None
        self.pending = {}  # step -> rollouts sent ahead (max_staleness > 0)

    def start(self, learner, version: int) -> None:
        if self.cfg.ray.enabled:
            from rlvr.distributed import RayRollouts

            self.backend = RayRollouts(self.cfg)
        else:
            from rlvr.workers import LocalRollouts, RolloutWorker

            self.backend = LocalRollouts(RolloutWorker(self.cfg, model=learner.model if self.cfg.rollout.engine == "hf"
                                                       else None))
        self.backend.sync(learner, version, wait=True)

    def _submit(self, step: int):
        return self.backend.submit(self.sampler.batch(step), self.cfg.rollout, self.cfg.seed * 1_000_003 + step,
                                   min_version=step - 1 - self.cfg.ray.max_staleness)

    def rollouts(self, step: int):
        pending = self.pending.pop(step, None) or self._submit(step)
        for ahead in range(step + 1, min(step + self.cfg.ray.max_staleness, self.cfg.steps) + 1):
            if ahead not in self.pending:
                self.pending[ahead] = self._submit(ahead)
        results = self.backend.collect(pending)
        groups = [g for r in results for g in r.groups]
        if not groups:
            errors = [e for r in results for e in r.errors]
            raise RuntimeError(f"step {step}: every trajectory was dropped by a failing reward "
                               f"({errors[-1] if errors else 'no error recorded'})")
        metrics = {}
        if self.cfg.algorithm.filter_zero_variance:  # DAPO dynamic sampling
            groups, results, metrics = self._refill(step, groups, results)
        return groups, _rollout_metrics(step, results, self.backend.restarts) | metrics

    def _refill(self, step: int, groups, results):
        """Roll out extra batches of tasks (at most `algorithm.refill_rounds`) until the step holds
        `data.tasks_per_step` groups that carry signal; keep that many of them, and the flat groups, which
        make_batch counts and drops."""
        from rlvr.batch import carries_signal

        want, rounds = self.cfg.data.tasks_per_step, 0
        signal = [carries_signal(g, self.cfg.algorithm) for g in groups]
        while sum(signal) < want and rounds < self.cfg.algorithm.refill_rounds:
            rounds += 1
            seed = self.cfg.seed * 1_000_003 + step + 7_919 * rounds  # not another step's seed
            more = self.backend.collect(self.backend.submit(self.sampler.extra(step, rounds), self.cfg.rollout, seed,
                                                            min_version=step - 1 - self.cfg.ray.max_staleness))
            results = results + more
            new = [g for r in more for g in r.groups]
            groups, signal = groups + new, signal + [carries_signal(g, self.cfg.algorithm) for g in new]
        kept, with_signal = [], 0
        for group, has in zip(groups, signal):
            if has:
                with_signal += 1
                if with_signal > want:
                    continue
            kept.append(group)
        return kept, results, {"batch/refill_rounds": float(rounds), "batch/signal_groups": float(min(with_signal, want)),
                               "batch/rolled_out_groups": float(len(groups))}

    def engines_asleep(self):
        return self._asleep() if self.sleep else nullcontext()

    @contextmanager
    def _asleep(self):
        self.backend.sleep()
        try:
            yield
        finally:
            self.backend.wake_up()

    def sync(self, learner, version: int) -> None:
        self.backend.sync(learner, version, wait=not self.cfg.ray.max_staleness)

    def evaluate(self, step: int) -> dict[str, float]:
        """One greedy trajectory per held-out task by policy v{step}: eval/mean and every reward component."""
        greedy = self.cfg.rollout.model_copy(update={"group_size": 1, "temperature": 0.0})
        results = self.backend.collect(self.backend.submit(self.held_out, greedy, self.cfg.seed, min_version=step))
        groups = [g for r in results for g in r.groups]
        trajectories = [t for g in groups for t in g.trajectories]
        return {**_reward_means(trajectories, "eval"), "eval/tasks": float(len(groups))}

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def _engines_share_the_learner_gpu(cfg: Config) -> bool:
    """vLLM engines sleep during learner steps when they and the learner share one GPU."""
    if cfg.rollout.engine != "vllm":
        return False
    if not cfg.ray.enabled:
        return resolve_device(cfg.learner.device).type == "cuda"
    r = cfg.ray
    return r.learner_gpus > 0 and r.worker_gpus > 0 and r.learner_gpus + r.worker_gpus * r.rollout_workers <= 1


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


def _rollout_metrics(step: int, results, reissued: int) -> dict[str, float]:
    trajectories = [t for r in results for g in r.groups for t in g.trajectories]
    sampled = sum(t.num_sampled_tokens for t in trajectories)
    seconds = max(r.seconds for r in results)  # the workers run side by side
    calls = [c for t in trajectories for c in t.tool_calls]
    lags = [step - 1 - t.policy_version for t in trajectories]  # versions behind the policy of step `step`
    n = len(trajectories)
    return {"rollout/sampled_tokens": float(sampled),
            "rollout/tokens_per_s": sampled / seconds if seconds else 0.0,
            "rollout/turns": sum(t.turns for t in trajectories) / n,
            "rollout/tool_calls": len(calls) / n,
            "rollout/tool_errors": sum(c.error is not None for c in calls) / max(len(calls), 1),
            "rollout/finished": sum(t.finish_reason == "stop" for t in trajectories) / n,
            "rollout/staleness_mean": sum(lags) / n, "rollout/staleness_max": float(max(lags)),
            "rollout/reissued_shards": float(reissued),
            "reward/dropped_trajectories": float(sum(r.dropped for r in results)),
            "time/score_s": max(r.score_s for r in results),
            **_reward_means(trajectories, "reward")}


def _reward_means(trajectories, prefix: str) -> dict[str, float]:
    """<prefix>/mean of the rewards and <prefix>/<name> of every reward component."""
    metrics = {f"{prefix}/mean": sum(t.reward for t in trajectories) / len(trajectories)}
    for name in trajectories[0].reward_components:
        metrics[f"{prefix}/{name}"] = sum(t.reward_components.get(name, 0.0) for t in trajectories) / len(trajectories)
    return metrics
