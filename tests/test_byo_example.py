"""docs/byo.md's walkthrough, for real: examples/units.py passes `rlvr envs check`, its gold solutions
become verified SFT conversations, and `rlvr train` runs on it with its own reward."""

import asyncio
import json

from rlvr.core.config import load_config
from rlvr.envs.checker import check_env
from rlvr.loop import train
from rlvr.stages.synth import Synthesizer

ENV = "examples.units:UnitsEnv"


def test_the_walkthrough_env_passes_the_checker_and_synthesizes_verified_conversations():
    from examples.units import UnitsEnv

    assert asyncio.run(check_env(UnitsEnv)).violations == []
    records = Synthesizer(load_config(None, ["model.name=tiny-random-llama", f"env.name={ENV}"])).run(
        UnitsEnv.tasks(4))
    assert len(records) == 4 and all(r["reward"] == 1.0 for r in records)


def test_rlvr_train_runs_on_it_with_its_own_reward(tmp_path):
    run = train(load_config(None, [f"output_dir={tmp_path}", "steps=1", "model.name=tiny-random-llama",
                                   "model.lora.rank=4", f"env.name={ENV}", "data.tasks_per_step=2",
                                   "rollout.group_size=2", "rollout.max_new_tokens=8", "rollout.max_turns=1",
                                   "logging.wandb=disabled"]))
    [row] = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert "reward/close_answer" in row and "reward/tool_call_validity/calls" in row
    # validity is averaged over the trajectories that made calls: absent when none did (a random model)
    assert ("reward/tool_call_validity" in row) == (row["rollout/tool_calls"] > 0)
