"""Checkpoints that resume losing nothing, written atomically.

    run/checkpoints/step-000004/   adapter (PEFT), learner_state.pt (optimiser, scheduler), rng.pt, meta.json

A checkpoint is written into `checkpoints/.tmp-step-N`, flushed, then renamed to `step-N`: a directory
named `step-N` is always complete, whatever moment the process was killed at. What a step depends on is
all in it or a function of the step number: the adapter and optimiser state, the learner process's RNG
states, and the step
(the tasks of step k and its sampling seeds are functions of (seed, k), rlvr/core/tasks.py). On resume the run's
metrics.jsonl and tasks.jsonl are cut back to the checkpoint's step, so the steps after it are redone and
logged once: no gap, no duplicate, and checkpoints after it are dropped. Old checkpoints are renamed out of
`step-N` before they are deleted, and pruned again on resume, so a kill during pruning leaves neither a half
checkpoint nor one too many.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from rlvr.training.models import AdapterState

PREFIX = "step-"
STATE_FILE = "learner_state.pt"


def save_checkpoint(run_path: Path, step: int, learner_state: dict, keep: int) -> Path:
    """Write `learner_state` (Learner.state_dict(), fetched from wherever the learner runs) as step `step`."""
    root = run_path / "checkpoints"
    final, tmp = root / f"{PREFIX}{step:06d}", root / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a run killed while writing
    learner_state["adapter"].save(tmp)  # PEFT format: a checkpoint's adapter loads like any other
    torch.save({k: v for k, v in learner_state.items() if k not in ("adapter", "rng")}, tmp / STATE_FILE)
    torch.save(learner_state["rng"], tmp / "rng.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step}))
    for file in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, final)
    prune_checkpoints(run_path, keep, newest=step)
    return final


def save_adapter(adapter: AdapterState, path: Path) -> Path:
    """Write the run's final adapter to `path` atomically, like a checkpoint: into a `.tmp-` sibling,
    flushed, then renamed; an adapter already there is renamed out of the way first and deleted after.
    `path` therefore holds a complete adapter, or the previous one, or nothing, whenever the process dies."""
    tmp, old = path.with_name(f".tmp-{path.name}"), path.with_name(f".tmp-{path.name}.removing")
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a process killed while writing
    shutil.rmtree(old, ignore_errors=True)
    adapter.save(tmp)
    for file in tmp.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def prune_checkpoints(run_path: Path, keep: int, newest: int) -> None:
    """Keep the `keep` newest checkpoints up to step `newest`; drop the rest, any after `newest`, and what a
    killed write or delete left behind.

    Called after each save, and on resume from step `newest`: a kill between a save and its pruning leaves
    one too many, and resuming from an earlier checkpoint rewinds the run, whose later steps are redone.
    """
    for leftover in (run_path / "checkpoints").glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    found = _checkpoints(run_path)
    kept = [c for c in found if int(c.name.removeprefix(PREFIX)) <= newest][-keep:]
    for old in found:
        if old not in kept:
            _remove(old)


def _remove(checkpoint: Path) -> None:
    """Rename out of the `step-N` namespace first, so a delete cut short never leaves a half checkpoint there."""
    doomed = checkpoint.with_name(f".tmp-{checkpoint.name}.removing")
    os.replace(checkpoint, doomed)
    shutil.rmtree(doomed)


def _checkpoints(run_path: Path) -> list[Path]:
    """The complete checkpoints of a run folder, oldest first."""
    return sorted((run_path / "checkpoints").glob(f"{PREFIX}*"))


def latest_checkpoint(run_path: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, if any."""
    found = _checkpoints(run_path)
    return found[-1] if found else None


def find_resumable_run(output_dir: Path, name: str) -> Path | None:
    """The newest run folder of `name` under `output_dir` that has a complete checkpoint."""
    runs = sorted((p for p in output_dir.glob(f"{name}-*") if latest_checkpoint(p)), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def load_checkpoint(checkpoint: Path) -> tuple[int, dict]:
    """The checkpoint's step and the learner state to restore (Learner.load_state_dict)."""
    state = torch.load(checkpoint / STATE_FILE, weights_only=True)
    state["adapter"] = AdapterState.load(checkpoint, version=state["steps_done"])
    state["rng"] = torch.load(checkpoint / "rng.pt", weights_only=False)  # our own file: Python's RNG state is a tuple
    return json.loads((checkpoint / "meta.json").read_text())["step"], state


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
