"""`rlvr train`: the RL loop, top to bottom, in-process or on Ray.

    1. sample tasks   2. roll out G per task, each trajectory scored as it ends   3. advantages
    4. learner update   5. the engines serve the new adapter   6. log   7. evaluate on held-out tasks

With `ray.enabled=false` all of it runs in this process (the HF engine samples with the learner's own
model, so a debugger steps through everything); with `ray.enabled=true` the learner and the rollout
workers are Ray actors (rlvr/distributed.py) and the same loop calls them the same way, through the
hand-offs of rlvr/core/protocols.py. Where the scored groups come from is rlvr/rollout/sources.py.
Checkpoints every `checkpoint.every` steps; `resume=auto` continues the newest run of the same name
(rlvr/training/checkpoint.py). `data.source=synthetic` skips rollouts (random scored trajectories): the
smoke run, which exercises model loading, advantages, the learner and the run folder.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rlvr.core.config import Config, ConfigError, check_training
from rlvr.core.contract import Trajectory
from rlvr.core.protocols import Learner, RolloutBackend, RolloutSource
from rlvr.reporting import plot_curves
from rlvr.rollout.demonstrations import load_demonstrations
from rlvr.rollout.sources import EnvSource, SyntheticSource
from rlvr.run import Run
from rlvr.training.advantages import make_batch
from rlvr.training.checkpoint import (find_resumable_run, latest_checkpoint, load_checkpoint, prune_checkpoints,
                                      save_adapter, save_checkpoint, truncate_log)
from rlvr.training.learner import build_learner

console = Console(stderr=True)


def train(cfg: Config) -> Run:
    check_training(cfg)
    source = _data_source(cfg)  # env, rewards, tasks and demonstrations resolve before any model loads
    demonstrations = load_demonstrations(cfg) if cfg.algorithm.sft_coef else None
    checkpoint = _checkpoint_to_resume(cfg)
    run = Run(cfg, path=checkpoint.parent.parent if checkpoint else None)
    console.print(f"[bold]rlvr[/] run folder: {run.path}")
    stop_ray = _start_ray(cfg)
    try:
        learner = _learner(cfg, demonstrations)
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


def _steps(cfg: Config, run: Run, learner: Learner, source: RolloutSource, done: int) -> None:
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


# -- where things run: Ray only decides that; the loop above calls both variants the same way --------------


def _start_ray(cfg: Config):
    """Start or join Ray when enabled; returns what stops it again (a no-op when it was running already)."""
    if not cfg.ray.enabled:
        return lambda: None
    from rlvr.distributed import start_ray

    return start_ray(cfg.ray, cfg.ray.rollout_workers)


def _learner(cfg: Config, demonstrations: list[Trajectory] | None) -> Learner:
    if cfg.ray.enabled:
        from rlvr.distributed import RemoteLearner

        return RemoteLearner(cfg, demonstrations)
    return build_learner(cfg, demonstrations)


def _rollout_backend(cfg: Config, learner: Learner) -> RolloutBackend:
    """Ray: `ray.rollout_workers` actors; in-process: one worker, sampling with the learner's own model (HF)."""
    if cfg.ray.enabled:
        from rlvr.distributed import RayRollouts

        return RayRollouts(cfg)
    from rlvr.rollout.workers import LocalRollouts, RolloutWorker

    # a 4-bit learner's model is not one the engines serve: they load the unquantised base and take adapters
    shared = cfg.rollout.engine != "vllm" and cfg.model.quantization == "none"
    return LocalRollouts(RolloutWorker(cfg, model=learner.model if shared else None))


def _data_source(cfg: Config) -> RolloutSource:
    """The run's source of scored groups, resolved (env, rewards, tasks) before any model loads."""
    if cfg.data.source == "synthetic":
        return SyntheticSource(cfg)
    return EnvSource(cfg, backend=lambda learner: _rollout_backend(cfg, learner))


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
