"""The loop on Ray: learner and rollout workers as actors on a local Ray bound to 127.0.0.1, adapters
synced through the object store, the policy-age bound, and a rollout worker that dies mid-step."""

import json
import os

import pytest

ray = pytest.importorskip("ray")

from rlvr.core.config import RayConfig, load_config  # noqa: E402
from rlvr.envs.calculator import CalculatorEnv, calculator_tasks  # noqa: E402
from rlvr.loop import train  # noqa: E402

CRASH_MARKER = "RLVR_TEST_CRASH_MARKER"


class CrashOnceEnv(CalculatorEnv):
    """Kills the process it runs in the first time any worker builds one (a segfaulting tool, an OOM kill)."""

    def __init__(self, task, seed=0, tool_timeout_s=10.0):
        try:
            os.close(os.open(os.environ[CRASH_MARKER], os.O_CREAT | os.O_EXCL))  # exactly one process wins
        except FileExistsError:
            pass
        else:
            os._exit(1)
        super().__init__(task, seed, tool_timeout_s)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    from rlvr.distributed import start_ray

    os.environ[CRASH_MARKER] = str(tmp_path_factory.mktemp("crash") / "crashed")  # inherited by Ray's processes
    stop = start_ray(RayConfig(enabled=True), rollout_workers=3)
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    yield
    stop()
    del os.environ[CRASH_MARKER]


def _config(tmp_path, *overrides):
    return load_config(None, [f"output_dir={tmp_path}", "model.name=tiny-random-llama", "model.lora.rank=4",
                              "data.tasks_per_step=3", "data.train_tasks=12", "rollout.group_size=2",
                              "rollout.max_new_tokens=12", "rollout.max_turns=2", "learner.micro_batch_tokens=1024",
                              "learner.lr=1e-3", "logging.wandb=disabled", "ray.enabled=true",
                              "ray.rollout_workers=2", *overrides])


def _rows(run):
    return [json.loads(line) for line in run.metrics_file.read_text().splitlines()]


def test_generation_changes_after_a_sync_through_the_object_store(local_ray):
    from rlvr.distributed import RayRollouts, RemoteLearner
    from rlvr.training.synthetic import synthetic_groups
    from rlvr.training.advantages import make_batch

    cfg = _config("/unused", "ray.rollout_workers=1", "learner.lr=0.05", "rollout.temperature=0")
    learner, rollouts = RemoteLearner(cfg), RayRollouts(cfg)
    tasks = calculator_tasks(2, seed=5)

    def greedy():
        [result] = rollouts.collect(rollouts.submit(tasks, cfg.rollout, seed=0, min_version=0))
        return result, [t.completion_ids for g in result.groups for t in g.trajectories]

    before, before_ids = greedy()
    batch, _ = make_batch(synthetic_groups(2, 4, 32, 16, vocab_size=49152, seed=1), cfg.algorithm)
    learner.step(batch)
    learner.step(batch)
    rollouts.sync(learner, version=2, wait=True)
    after, after_ids = greedy()
    assert before.version == 0 and after.version == 2
    assert {t.policy_version for g in after.groups for t in g.trajectories} == {2}
    assert after_ids != before_ids  # the worker samples from the learner's new weights
    rollouts.close()
    learner.close()


@pytest.mark.parametrize("staleness", [0, 1])
def test_no_trajectory_is_older_than_the_staleness_allowed(local_ray, tmp_path, staleness):
    run = train(_config(tmp_path, "steps=4", f"ray.max_staleness={staleness}", "eval.every=2", "eval.tasks=2"))
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # step 1 is sampled by the initial policy; from then on each step lags by exactly the bound
    assert [r["rollout/staleness_max"] for r in rows] == [0.0] + [float(staleness)] * 3
    assert all(r["batch/trajectories"] == 6 and r["reward/dropped_trajectories"] == 0 for r in rows)
    assert all(r["time/learner_s"] > 0 and r["time/sync_s"] >= 0 for r in rows)
    assert (run.path / "adapter" / "adapter_model.safetensors").is_file()


def test_a_rollout_worker_that_dies_mid_step_is_restarted_and_its_tasks_reissued(local_ray, tmp_path):
    run = train(_config(tmp_path, "steps=2", f"env.name={__name__}:CrashOnceEnv"))
    assert os.path.exists(os.environ[CRASH_MARKER])  # a worker did die
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["rollout/reissued_shards"] == 1  # the dead worker's shard, once
    assert all(r["batch/trajectories"] == 6 for r in rows)  # no task lost: 3 groups of 2 every step
    tasks = [json.loads(line)["tasks"] for line in run.tasks_file.read_text().splitlines()]
    assert all(len(set(step)) == 3 for step in tasks)
