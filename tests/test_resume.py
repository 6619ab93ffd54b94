"""Checkpoints and resume: a run killed with SIGKILL at three different points, resumed with resume=auto,
ends with every step once: no task batch skipped or repeated, no metrics gap or duplicate, and the same
result as a run that was never interrupted."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from rlvr.envs.calculator import CalculatorEnv
from rlvr.core.tasks import TaskSampler

STEPS = 4
OVERRIDES = [f"steps={STEPS}", "model.name=tiny-random-llama", "model.lora.rank=4",
             "data.tasks_per_step=2", "data.train_tasks=6", "rollout.group_size=2", "rollout.max_new_tokens=12",
             "rollout.max_turns=2", "learner.micro_batch_tokens=1024", "learner.lr=1e-3", "logging.wandb=disabled",
             "checkpoint.every=1", "checkpoint.keep=2", "resume=auto"]


# a reward that varies between trajectories, so that every step really changes the adapter
REWARD = "def varied(trajectory, task):\n    return float(trajectory.id.endswith('/1'))\n"


def _start(output_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    (output_dir.parent / "varied.py").write_text(REWARD)
    config = output_dir.parent / "resumable.yaml"
    config.write_text(f"name: resumable\nrewards:\n  functions: [{{name: '{output_dir.parent / 'varied.py'}:varied'}}]\n")
    return subprocess.Popen([sys.executable, "-m", "rlvr.cli", "train", str(config), *OVERRIDES,
                             f"output_dir={output_dir}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run_dir(output_dir):
    [run] = list(output_dir.iterdir())
    return run


def _kill_after(output_dir, rows_seen, rng):
    """SIGKILL the run once its metrics have `rows_seen` rows, plus a random delay (mid-step or mid-save)."""
    proc = _start(output_dir)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        runs = list(output_dir.iterdir()) if output_dir.exists() else []
        if runs and len(_rows(runs[0] / "metrics.jsonl")) >= rows_seen:
            time.sleep(rng.uniform(0.0, 0.4))
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _finish(output_dir):
    proc = _start(output_dir)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def test_sigkill_at_three_points_then_resume_loses_nothing(tmp_path):
    rng = random.Random(0)
    reference = tmp_path / "uninterrupted"
    _finish(reference)
    expected_rows = _rows(_run_dir(reference) / "metrics.jsonl")

    tasks = CalculatorEnv.tasks(6, seed=0, split="train")
    sampler = TaskSampler(tasks, per_step=2, seed=0)
    expected_tasks = [[t.id for t in sampler.batch(step)] for step in range(1, STEPS + 1)]

    interrupted = tmp_path / "interrupted"
    for rows_seen in (1, 2, 3):  # three different points, each resumed by the next start
        _kill_after(interrupted, rows_seen, rng)
    _finish(interrupted)

    run = _run_dir(interrupted)
    rows = _rows(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # no gap, no duplicate
    assert [r["tasks"] for r in _rows(run / "tasks.jsonl")] == expected_tasks  # none skipped or repeated
    assert all(r["learner/grad_norm"] > 0 for r in expected_rows)  # every step changed the adapter
    for got, want in zip(rows, expected_rows):
        assert got["learner/loss"] == pytest.approx(want["learner/loss"], abs=1e-6)
        assert got["reward/mean"] == want["reward/mean"]
        assert got["rollout/sampled_tokens"] == want["rollout/sampled_tokens"]
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["step-000003", "step-000004"]  # complete ones only, the newest `keep`
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    reference_adapter = load_file(_run_dir(reference) / "adapter" / "adapter_model.safetensors")
    for name, value in reference_adapter.items():
        torch.testing.assert_close(adapter[name], value, atol=1e-6, rtol=0)


def test_resume_from_a_directory_that_is_not_a_checkpoint_fails_before_loading(tmp_path):
    from rlvr.core.config import ConfigError, load_config
    from rlvr.loop import train

    with pytest.raises(ConfigError, match="is not a complete checkpoint"):
        train(load_config(None, [f"output_dir={tmp_path}", f"resume={tmp_path}", "model.name=tiny-random-llama"]))


def _train(output_dir, *overrides):
    from rlvr.core.config import load_config
    from rlvr.loop import train

    return train(load_config(None, [*OVERRIDES, f"output_dir={output_dir}", *overrides]))


def test_resume_prunes_what_a_kill_between_save_and_pruning_left(tmp_path):
    run = _train(tmp_path, "steps=2", "checkpoint.keep=2")  # as if killed after saving step 2, before pruning
    (run.path / "checkpoints" / ".tmp-step-000003").mkdir()  # a save cut short
    (run.path / "checkpoints" / ".tmp-step-000000.removing").mkdir()  # a delete cut short
    _train(tmp_path, "steps=2", "checkpoint.keep=1")
    assert sorted(p.name for p in (run.path / "checkpoints").iterdir()) == ["step-000002"]


def test_resume_from_an_earlier_checkpoint_rewinds_the_run(tmp_path):
    run = _train(tmp_path, "steps=3", "checkpoint.keep=3")
    first = run.path / "checkpoints" / "step-000001"
    redone = _train(tmp_path, "steps=2", "checkpoint.keep=3", f"resume={first}")
    assert redone.path == run.path
    # the old timeline's steps 2 and 3 are gone (resume=auto would otherwise pick its step 3); step 2 is redone
    assert sorted(p.name for p in (run.path / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert [r["step"] for r in _rows(run.metrics_file)] == [1, 2]


def test_pruning_keeps_the_newest_up_to_the_resumed_step(tmp_path):
    from rlvr.training.checkpoint import prune_checkpoints

    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        (root / f"step-00000{step}").mkdir(parents=True)
    prune_checkpoints(tmp_path, keep=2, newest=1)  # a rewind to step 1: 2 and 3 go, 1 stays
    assert [p.name for p in root.iterdir()] == ["step-000001"]
