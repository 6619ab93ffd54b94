"""The run folder: resolved config, metrics.jsonl, adapter; wandb offline unless configured otherwise."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rlvr.config import Config


class Run:
    """Creates `output_dir/name-YYYYmmdd-HHMMSS/` and writes what a run produces into it."""

    def __init__(self, cfg: Config):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.path = Path(cfg.output_dir) / f"{cfg.name}-{stamp}"
        suffix = 1
        while self.path.exists():  # two runs started in the same second
            self.path = Path(cfg.output_dir) / f"{cfg.name}-{stamp}-{suffix}"
            suffix += 1
        self.path.mkdir(parents=True)
        (self.path / "config.yaml").write_text(cfg.to_yaml())
        self.metrics_file = self.path / "metrics.jsonl"
        self.wandb = _start_wandb(cfg, self.path)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
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
