"""The in-process RL loop on a real env: tasks per step, rollouts scored as they end, the learner update,
and failures that stop the run before any model loads or name the failing reward."""

import json
from collections import Counter

import pytest

from rlvr.core.config import ConfigError, load_config
from rlvr.core.contract import dump_jsonl
from rlvr.envs.calculator import calculator_tasks
from rlvr.loop import train
from rlvr.rewards.scoring import RewardError
from rlvr.core.tasks import TaskSampler, load_tasks


def test_sampler_visits_every_task_once_per_epoch_and_is_a_function_of_the_step():
    tasks = calculator_tasks(10)
    sampler = TaskSampler(tasks, per_step=4, seed=3)
    first_epoch = [t.id for step in (1, 2) for t in sampler.batch(step)] + [t.id for t in sampler.batch(3)[:2]]
    assert sorted(first_epoch) == sorted(t.id for t in tasks)
    seen = Counter(t.id for step in range(1, 6) for t in sampler.batch(step))  # 20 draws = 2 epochs
    assert set(seen.values()) == {2}
    assert [t.id for t in TaskSampler(tasks, 4, seed=3).batch(4)] == [t.id for t in sampler.batch(4)]
    assert [t.id for t in TaskSampler(tasks, 4, seed=4).batch(1)] != [t.id for t in sampler.batch(1)]


def test_tasks_from_a_jsonl_file(tmp_path):
    path = tmp_path / "tasks.jsonl"
    dump_jsonl(path, calculator_tasks(3))
    assert [t.id for t in load_tasks(str(path), None, 0, 0, "train", {})] == [t.id for t in calculator_tasks(3)]
    with pytest.raises(ValueError, match="neither 'env' nor a JSON-lines file"):
        load_tasks("nowhere.jsonl", None, 0, 0, "train", {})


def _config(tmp_path, *overrides):
    return load_config(None, [f"output_dir={tmp_path}", "steps=2", "model.name=tiny-random-llama",
                              "model.lora.rank=4", "data.tasks_per_step=2", "data.train_tasks=8",
                              "rollout.group_size=2", "rollout.max_new_tokens=12", "rollout.max_turns=2",
                              "learner.micro_batch_tokens=1024", "learner.lr=1e-3", "logging.wandb=disabled",
                              *overrides])


def test_three_steps_on_the_calculator_env_with_held_out_evaluation(tmp_path):
    run = train(_config(tmp_path, "steps=3", "eval.every=2", "eval.tasks=3", "logging.samples_every=3"))
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["batch/trajectories"] == 4 and row["rollout/sampled_tokens"] > 0
        assert "reward/numeric_answer" in row and "reward/tool_call_validity/calls" in row
        assert ("reward/tool_call_validity" in row) == (row["rollout/tool_calls"] > 0)  # over trajectories with calls
        assert row["learner/tokens_per_s"] > 0 and row["reward/dropped_trajectories"] == 0
    # evaluated every 2 steps and after the last, greedy, one trajectory per held-out task
    assert ["eval/mean" in r for r in rows] == [False, True, True]
    assert rows[1]["eval/tasks"] == 3 and 0.0 <= rows[1]["eval/numeric_answer"] <= 1.0
    assert (run.path / "adapter" / "adapter_model.safetensors").is_file()
    assert (run.path / "curves.png").stat().st_size > 1000
    samples = (run.path / "samples" / "step-000003.md").read_text()
    tasks = [json.loads(line)["tasks"] for line in run.tasks_file.read_text().splitlines()]
    assert samples.count("## calculator-") == 4  # best and worst of each of the 2 groups
    assert all(f"## {task_id}: best of 2" in samples for task_id in tasks[2]) and "**user**" in samples


def test_synthetic_data_cannot_be_evaluated(tmp_path):
    with pytest.raises(ConfigError, match="eval.every: synthetic data has no held-out tasks"):
        train(_config(tmp_path, "data.source=synthetic", "eval.every=1"))


def test_bad_names_fail_before_any_model_loads(tmp_path):
    with pytest.raises(ConfigError, match="unknown env 'nope'"):
        train(_config(tmp_path, "env.name=nope"))
    with pytest.raises(ConfigError, match="unknown reward 'nope'"):
        train(_config(tmp_path, "rewards.functions=[{name: nope}]"))
    with pytest.raises(ConfigError, match="not a subclass of rlvr.envs.base.ToolEnv"):
        train(_config(tmp_path, "env.name=rlvr.envs.calculator:evaluate"))
    assert list(tmp_path.iterdir()) == []  # no run folder either


def test_a_failing_reward_stops_the_run_or_drops_its_trajectories(tmp_path):
    plugin = tmp_path / "flaky.py"
    plugin.write_text("def flaky(trajectory, task):\n"
                      "    if trajectory.id.endswith('/1'):\n"
                      "        raise ZeroDivisionError('judge crashed')\n"
                      "    return 1.0\n")
    reward = f"rewards.functions=[{{name: '{plugin}:flaky'}}]"
    out = tmp_path / "runs"
    with pytest.raises(RewardError, match=r"reward 'flaky' on task 'calculator-train-0-\d+', trajectory "
                                          r"'calculator-train-0-\d+/1': ZeroDivisionError: judge crashed"):
        train(_config(out, reward))
    run = train(_config(out, reward, "rewards.on_error=drop"))
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [r["batch/trajectories"] for r in rows] == [2, 2]  # one of each group's two trajectories dropped
    assert [r["reward/dropped_trajectories"] for r in rows] == [2, 2]  # per step
    assert all(r["reward/mean"] == 1.0 for r in rows)  # the dropped ones were never scored 0


def test_a_step_whose_groups_are_all_flat_skips_the_update_when_they_are_filtered(tmp_path):
    # the random tiny model never answers right: every group's rewards are equal
    run = train(_config(tmp_path, "steps=2", "algorithm.filter_zero_variance=true"))
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [(r["step"], r["learner/skipped"], r["batch/trajectories"]) for r in rows] == [(1, 1.0, 0.0), (2, 1.0, 0.0)]
    assert (run.path / "adapter" / "adapter_model.safetensors").is_file()


def test_the_demonstration_term_needs_demonstrations_and_logs_their_nll(tmp_path):
    from rlvr.stages.synth import Synthesizer, write_jsonl

    with pytest.raises(ConfigError, match="algorithm.sft_coef=0.5 needs demonstrations: set sft.data"):
        train(_config(tmp_path / "none", "algorithm.sft_coef=0.5"))
    data = tmp_path / "demonstrations.jsonl"
    write_jsonl(data, Synthesizer(_config(tmp_path)).run(calculator_tasks(4)))
    run = train(_config(tmp_path / "runs", "algorithm.sft_coef=0.5", f"sft.data={data}", "sft.batch_size=2"))
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert len(rows) == 2 and all(r["learner/demonstration_nll"] > 0 for r in rows)
