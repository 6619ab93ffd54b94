"""Pictures of a finished run, drawn from its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


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
