"""Checkpoints that resume losing nothing, written atomically.

    run/checkpoints/step-000004/   adapter (PEFT) + optimiser/scheduler state, rng.pt, meta.json

A checkpoint is written into `checkpoints/.tmp-step-N`, flushed, then renamed to `step-N`: a directory
named `step-N` is always complete, whatever moment the process was killed at. What a step depends on is
all in it or a function of the step number: the adapter and optimiser state, the RNG states, and the step
(the tasks of step k and its sampling seeds are functions of (seed, k), rlvr/tasks.py). On resume the run's
metrics.jsonl and tasks.jsonl are cut back to the checkpoint's step, so the steps after it are redone and
logged once: no gap, no duplicate.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

PREFIX = "step-"


def save_checkpoint(run_path: Path, step: int, learner, keep: int) -> Path:
    root = run_path / "checkpoints"
    final, tmp = root / f"{PREFIX}{step:06d}", root / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a run killed while writing
    learner.save(tmp, with_state=True)
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "rng.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step}))
    for file in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, final)
    for old in sorted(root.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_path: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, if any."""
    found = sorted((run_path / "checkpoints").glob(f"{PREFIX}*"))
    return found[-1] if found else None


def find_resumable_run(output_dir: Path, name: str) -> Path | None:
    """The newest run folder of `name` under `output_dir` that has a complete checkpoint."""
    runs = sorted((p for p in output_dir.glob(f"{name}-*") if latest_checkpoint(p)), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def load_checkpoint(checkpoint: Path, learner) -> int:
    """Restore the learner and the RNG states; returns the checkpoint's step."""
    learner.load(checkpoint)
    rng = torch.load(checkpoint / "rng.pt", weights_only=False)  # our own file: Python's RNG state is a tuple
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((checkpoint / "meta.json").read_text())["step"]


def truncate_log(path: Path, step: int) -> None:
    """Keep the rows of a JSON-lines log up to `step`; a half-written last line is dropped too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the process died in the middle of writing it
        if row["step"] <= step:
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept))
