"""`rlvr train`: the RL loop, top to bottom.

Until the rollout issue lands, the tasks of a step are synthetic scored groups (data.source=synthetic):
the loop exercises model loading, advantages, the learner and the run folder for real.
"""

from __future__ import annotations

from rich.console import Console

from rlvr.batch import make_batch
from rlvr.config import Config, ConfigError
from rlvr.learner import build_learner
from rlvr.run import Run
from rlvr.synthetic import synthetic_groups

console = Console(stderr=True)


def train(cfg: Config) -> Run:
    if cfg.data.source != "synthetic":
        raise ConfigError(f"data.source: only 'synthetic' is available in this version (got {cfg.data.source!r})")
    run = Run(cfg)
    console.print(f"[bold]rlvr[/] run folder: {run.path}")
    learner = build_learner(cfg)
    vocab = learner.lm_head.weight.shape[0]
    for step in range(1, cfg.steps + 1):
        # 1-3. tasks, rollouts, scores (synthetic for now)
        groups = synthetic_groups(cfg.data.tasks_per_step, cfg.rollout.group_size, cfg.data.synthetic_prompt_tokens,
                                  cfg.data.synthetic_completion_tokens, vocab, seed=cfg.seed * 1_000_003 + step)
        # 4. advantages
        batch, batch_metrics = make_batch(groups, cfg.algorithm)
        # 5. learner update
        metrics = {**batch_metrics, **learner.step(batch)}
        # 7. log
        run.log(step, metrics)
        if step % cfg.logging.log_every == 0:
            console.print(f"step {step}/{cfg.steps}  loss {metrics['learner/loss']:+.4f}  "
                          f"reward {metrics['reward/mean']:.3f}  {metrics['learner/tokens_per_s']:.0f} tok/s")
    learner.save(run.path / "adapter", with_state=False)
    run.finish()
    console.print(f"[green]done[/]: metrics in {run.metrics_file}, adapter in {run.path / 'adapter'}")
    return run
