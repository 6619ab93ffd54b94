"""The CLI end to end: `rlvr train configs/smoke.yaml` and config errors before any model loads."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rlvr(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rlvr.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_smoke_run_writes_metrics_config_and_adapter(tmp_path):
    result = _rlvr("train", str(ROOT / "configs/smoke.yaml"), f"output_dir={tmp_path}", "logging.wandb=offline",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run] = list(tmp_path.iterdir())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["learner/tokens_per_s"] > 0 and r["learner/loss"] == r["learner/loss"] for r in rows)
    assert "name: smoke" in (run / "config.yaml").read_text()
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run / "adapter").iterdir()}
    assert any((run / "wandb").glob("offline-run-*"))


def test_config_errors_fail_fast_with_one_line(tmp_path):
    result = _rlvr("train", str(ROOT / "configs/smoke.yaml"), "learner.lr_rate=1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("config error: unknown key 'learner.lr_rate' (did you mean 'learner.lr'?)")
    assert not list(tmp_path.iterdir())  # nothing created, nothing loaded
