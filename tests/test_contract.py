import json

import pytest
from pydantic import ValidationError

from rlvr.core.contract import Batch, Group, Task, ToolCall, ToolCallError, Trajectory, dump_jsonl, load_jsonl


def _trajectory(**kw):
    fields = dict(id="t0", task_id="task", group_id="g", prompt_ids=[1, 2, 3], completion_ids=[4, 5, 6, 7],
                  loss_mask=[1, 1, 0, 1], logprobs=[-0.5, -1.0, 0.0, -0.1], reward=1.0,
                  tool_calls=[ToolCall(name="add", arguments={"a": 1}, raw="<tool_call>..", span=(0, 2), result="3",
                                       latency_s=0.01, credit=1.0),
                              ToolCall(raw="<tool_call>{bad", error=ToolCallError.parse, result="could not parse")])
    fields.update(kw)
    return Trajectory(**fields)


def test_json_round_trip(tmp_path):
    task = Task(id="task", env="calculator", prompt=[{"role": "user", "content": "2+2?"}], answer=4)
    group = Group(id="g", task=task, trajectories=[_trajectory(), _trajectory(id="t1", reward=0.0)])
    assert Group.model_validate_json(group.model_dump_json()) == group
    dump_jsonl(tmp_path / "t.jsonl", group.trajectories)
    assert load_jsonl(tmp_path / "t.jsonl", Trajectory) == group.trajectories
    assert group.rewards == [1.0, 0.0]
    assert group.trajectories[0].num_sampled_tokens == 3


def test_invalid_trajectories_are_rejected():
    with pytest.raises(ValidationError, match="must have the same length"):
        _trajectory(loss_mask=[1, 1])
    with pytest.raises(ValidationError, match="only 0 and 1"):
        _trajectory(loss_mask=[1, 2, 0, 1])
    with pytest.raises(ValidationError, match="outside"):
        _trajectory(tool_calls=[ToolCall(name="x", span=(2, 9))])
    with pytest.raises(ValidationError, match="extra"):
        _trajectory(unknown_field=1)


def test_group_and_batch_consistency():
    task = Task(id="task", env="e", prompt="p")
    with pytest.raises(ValidationError, match="group_id"):
        Group(id="other", task=task, trajectories=[_trajectory()])
    with pytest.raises(ValueError, match="no reward"):
        Group(id="g", task=task, trajectories=[_trajectory(reward=None)]).rewards
    with pytest.raises(ValidationError, match="4 completion tokens but 2 advantages"):
        Batch(trajectories=[_trajectory()], advantages=[[0.0, 0.0]])


def test_broken_row_names_file_and_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    rows = [json.dumps({"id": "a", "env": "e", "prompt": "p"}), "{not json", json.dumps({"id": "b", "env": "e"})]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"tasks.jsonl:2: not a valid Task"):
        load_jsonl(path, Task)
    path.write_text(rows[0] + "\n" + rows[2] + "\n")
    with pytest.raises(ValueError, match=r"tasks.jsonl:2: not a valid Task: prompt: Field required"):
        load_jsonl(path, Task)


def test_contract_and_plugins_import_without_torch():
    import subprocess
    import sys

    code = "import rlvr, rlvr.envs, rlvr.rewards, rlvr.core.contract, sys; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
