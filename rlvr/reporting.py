"""Pictures of a finished run (drawn from its metrics.jsonl) and of policies compared by evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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


def plot_policies(reports: dict[str, dict[str, Any]], out: str | Path) -> None:
    """A PNG with one panel per measure (success with its 95% Wilson interval, success on the tasks that
    need a tool, calls per task, recovery after a tool error, unnecessary calls), a bar per policy; panels
    with nothing measured are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlvr.core.stats import wilson_interval

    panels = [(m, title) for m, title in (("success_rate", "held-out success"),
                                          ("tool_task_success_rate", "success on tool tasks"),
                                          ("tool_calls_per_trajectory", "tool calls per task"),
                                          ("recovery_rate", "success after a tool error"),
                                          ("unnecessary_call_rate", "calls on no-tool tasks"))
              if any(r.get(m) is not None for r in reports.values())]
    labels = list(reports)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (measure, title) in zip(axes[0], panels):
        values = [reports[p].get(measure) or 0.0 for p in labels]
        errors = None
        if measure == "success_rate":
            bounds = [wilson_interval(v, len(reports[p]["outcomes"])) for p, v in zip(labels, values)]
            errors = [[v - lo for v, (lo, _) in zip(values, bounds)], [hi - v for v, (_, hi) in zip(values, bounds)]]
        ax.bar(range(len(labels)), values, yerr=errors, capsize=4, color=[f"C{i}" for i in range(len(labels))])
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
