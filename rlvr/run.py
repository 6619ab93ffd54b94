"""The run folder: resolved config, metrics.jsonl, adapter; wandb offline unless configured otherwise."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from rlvr.core.config import Config
from rlvr.core.contract import Group, Trajectory
from rlvr.rewards.base import applies


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

    def write_samples(self, step: int, groups: list[Group]) -> Path:
        """samples/step-N.md: the best and the worst trajectory of each group, readably."""
        folder = self.path / "samples"
        folder.mkdir(exist_ok=True)
        parts = [f"# Step {step}\n"]
        for group in groups:
            ranked = sorted(group.trajectories, key=lambda t: t.reward or 0.0)
            for label, trajectory in (("best", ranked[-1]), ("worst", ranked[0]))[: len(ranked)]:
                parts.append(render_trajectory(trajectory, f"{group.task.id}: {label} of {len(ranked)}"))
        out = folder / f"step-{step:06d}.md"
        out.write_text("\n".join(parts))
        return out

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def render_trajectory(trajectory: Trajectory, title: str) -> str:
    """A trajectory as Markdown: reward and its parts, then every message, tool calls with their verdict."""
    components = trajectory.reward_components
    parts = ", ".join(f"{k} " + (f"{v:g}" if applies(components, k) else "n/a")
                      for k, v in components.items() if "/" not in k)
    lines = [f"## {title}", "", f"reward **{trajectory.reward:g}** ({parts}); {trajectory.turns} turns, finished by "
             f"{trajectory.finish_reason}, policy v{trajectory.policy_version}", ""]
    for message in trajectory.messages:
        content = message.get("content") or ""
        if isinstance(content, list):
            content = json.dumps(content)
        lines += [f"**{message['role']}**" + (f" ({message['name']})" if message.get("name") else ""), "", "```",
                  content.strip(), "```", ""]
    for call in trajectory.tool_calls:
        verdict = call.error.value if call.error else "ok"
        credit = f", credit {call.credit:.2f}" if call.credit is not None else ""
        lines.append(f"- turn {call.turn}: `{call.name}({json.dumps(call.arguments)[:200]})` -> {verdict}{credit}")
    return "\n".join(lines) + "\n"


def _start_wandb(cfg: Config, path: Path):
    mode = cfg.logging.wandb
    if mode == "disabled":
        return None
    if mode == "auto":  # online only when the user set up wandb; otherwise log locally and `wandb sync` later
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    import wandb

    # one wandb run per run folder: the id is kept in the folder, so a resumed run continues the same wandb run
    id_file = path / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:16]
    id_file.write_text(run_id)
    return wandb.init(project=cfg.logging.project, name=path.name, dir=str(path), mode=mode, id=run_id,
                      resume="allow", config=cfg.model_dump(mode="json"), reinit="finish_previous")
