"""launch/: a local Ray head on 127.0.0.1, a 2-step CPU run submitted with `ray job submit` through
launch/submit.sh, the job SUCCEEDED and its run folder has metrics and an adapter; the head is stopped."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PORTS = {"RAY_PORT": "6391", "RAY_DASHBOARD_PORT": "8275"}  # not Ray's defaults: leave a user's cluster alone


@pytest.fixture
def ray_head():
    env = {**os.environ, **PORTS, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_ADDRESS": f"http://127.0.0.1:{PORTS['RAY_DASHBOARD_PORT']}"}
    if shutil.which("ray", path=env["PATH"]) is None:
        pytest.skip("the ray CLI is not installed")
    started = subprocess.run(["bash", str(ROOT / "launch/local_ray.sh"), "start"], env=env, capture_output=True,
                             text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield env
    finally:
        subprocess.run(["bash", str(ROOT / "launch/local_ray.sh"), "stop"], env=env, capture_output=True, timeout=180)


def test_ray_job_submit_runs_two_steps_on_a_local_head(ray_head, tmp_path):
    # the job joins the head (ray.address=auto) and runs the learner and a rollout worker as actors
    submitted = subprocess.run(
        ["bash", str(ROOT / "launch/submit.sh"), "configs/smoke.yaml", f"output_dir={tmp_path}",
         "logging.wandb=disabled", "data.source=env", "rollout.max_new_tokens=8", "rollout.max_turns=1",
         "ray.enabled=true", "ray.address=auto"], env=ray_head, capture_output=True, text=True, timeout=600)
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0 and "succeeded" in output, output[-3000:]
    [run] = list(tmp_path.iterdir())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["rollout/sampled_tokens"] > 0 for r in rows)  # rolled out by the worker actor
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_kuberay_manifest_and_slurm_script_are_well_formed():
    import shlex

    import yaml

    from rlvr.core.config import load_config

    job = yaml.safe_load((ROOT / "launch/rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:4] == ["python", "-m", "rlvr.cli", "train"]
    config = ROOT / words[4].removeprefix("/app/")  # the image holds the repository at /app
    load_config(config, words[5:])  # the job's config and overrides validate
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert subprocess.run(["bash", "-n", str(ROOT / "launch/slurm.sbatch")]).returncode == 0
