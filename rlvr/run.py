"""The run folder: resolved config, metrics.jsonl, adapter; wandb offline unless configured otherwise."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rlvr.config import Config


class Run:
    """Creates `output_dir/name-YYYYmmdd-HHMMSS/` (or reopens `path`, to resume) and writes what a run
    produces into it: config.yaml, metrics.jsonl, tasks.jsonl (the task ids of every step)."""

    def __init__(self, cfg: Config, path: Path | None = None):
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path(cfg.output_dir) / f"{cfg.name}-{stamp}"
            suffix = 1
            while path.exists():  # two runs started in the same second
                path = Path(cfg.output_dir) / f"{cfg.name}-{stamp}-{suffix}"
                suffix += 1
            path.mkdir(parents=True)
        self.path = path
        (self.path / "config.yaml").write_text(cfg.to_yaml())
        self.metrics_file = self.path / "metrics.jsonl"
        self.tasks_file = self.path / "tasks.jsonl"
        self.wandb = _start_wandb(cfg, self.path)

    def log(self, step: int, metrics: dict[str, Any], task_ids: list[str] | None = None) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if task_ids is not None:
            with open(self.tasks_file, "a") as f:
                f.write(json.dumps({"step": step, "tasks": task_ids}) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(cfg: Config, path: Path):
    mode = cfg.logging.wandb
    if mode == "disabled":
        return None
    if mode == "auto":  # online only when the user set up wandb; otherwise log locally and `wandb sync` later
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    import wandb

    return wandb.init(project=cfg.logging.project, name=path.name, dir=str(path), mode=mode,
                      config=cfg.model_dump(mode="json"), reinit="finish_previous")
