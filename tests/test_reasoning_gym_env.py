import asyncio
import json
import sys

import pytest

pytest.importorskip("reasoning_gym")

from rlvr.core.contract import Task, ToolCall, Trajectory  # noqa: E402
from rlvr.envs.reasoning_gym import ReasoningGymEnv, decode_entry, encode_entry, reasoning_gym_tasks  # noqa: E402
from rlvr.rewards.answer import extract_answer
from rlvr.rewards.reasoning_gym import reasoning_gym_score  # noqa: E402


def _trajectory(task: Task, final_answer: str | None) -> Trajectory:
    return Trajectory(id=f"{task.id}/0", task_id=task.id, group_id=task.id, prompt_ids=[1], completion_ids=[0],
                      loss_mask=[1], logprobs=[0.0], final_answer=final_answer)


def test_tasks_are_deterministic_and_splits_differ():
    a = reasoning_gym_tasks(4, seed=1, dataset="basic_arithmetic")
    assert a == reasoning_gym_tasks(4, seed=1, dataset="basic_arithmetic")
    assert a != reasoning_gym_tasks(4, seed=2, dataset="basic_arithmetic")
    test = reasoning_gym_tasks(4, seed=1, split="test", dataset="basic_arithmetic")
    assert {t.prompt for t in a}.isdisjoint(t.prompt for t in test)
    task = a[0]
    assert task.id == "reasoning_gym-basic_arithmetic-train-1-0" and task.env == "reasoning_gym"
    assert task.metadata["dataset"] == "basic_arithmetic" and task.metadata["tools"] == []
    assert task.prompt == decode_entry(task.metadata["entry"])["question"]
    assert Task.model_validate_json(task.model_dump_json()) == task
    assert ReasoningGymEnv.tasks(4, seed=1, dataset="basic_arithmetic") == a


def test_generator_settings_and_bad_names():
    (easy,) = reasoning_gym_tasks(1, dataset="basic_arithmetic", config={"min_terms": 2, "max_terms": 2,
                                                                         "min_digits": 1, "max_digits": 1})
    assert decode_entry(easy.metadata["entry"])["metadata"]["num_terms"] == 2
    with pytest.raises(ValueError, match="unknown reasoning-gym dataset 'no_such'"):
        reasoning_gym_tasks(1, dataset="no_such")
    with pytest.raises(ValueError, match="unknown reasoning_gym tool.*'abacus'"):
        reasoning_gym_tasks(1, tools=["abacus"])


def test_entries_round_trip_exactly_through_json():
    for dataset in ("arc_agi", "codeio", "basic_arithmetic"):
        (task,) = reasoning_gym_tasks(1, dataset=dataset)
        stored = json.loads(json.dumps(task.metadata["entry"]))
        assert decode_entry(stored) == decode_entry(task.metadata["entry"])
    value = {"grid": ((1, 2), (3, 4)), 7: ["x"], "__tuple__": 1}
    assert decode_entry(json.loads(json.dumps(encode_entry(value)))) == value
    with pytest.raises(TypeError, match="no JSON form"):
        encode_entry({"s": {1, 2}})


@pytest.mark.parametrize("dataset", ["gsm_symbolic", "basic_arithmetic", "chain_sum", "arc_agi", "letter_counting"])
def test_right_answers_score_one_and_wrong_ones_do_not(dataset):
    for task in reasoning_gym_tasks(3, seed=5, dataset=dataset):
        answer = task.answer
        for text in (f"Let me think.\n<answer>{answer}</answer>", f"Work...\nAnswer: {answer}", f"\\boxed{{{answer}}}"):
            if "\n" in answer and not text.startswith("Let"):
                text = f"Work...\n**Answer:**\n{answer}"  # a grid below the answer line
            score = reasoning_gym_score(_trajectory(task, text), task)
            assert score.total == 1.0 and score.components["solved"] == 1.0, (dataset, text, score)
        wrong = reasoning_gym_score(_trajectory(task, "Answer: 7777777"), task)
        assert wrong.components["solved"] == 0.0 and wrong.total < 0.1
        assert reasoning_gym_score(_trajectory(task, "Answer: 7777777"), task, strict=True).total == 0.0


def test_partial_credit_is_the_datasets_own():
    (task,) = reasoning_gym_tasks(1, dataset="gsm_symbolic")
    score = reasoning_gym_score(_trajectory(task, "Answer: 7777777"), task)
    assert score.total == 0.01 and score.components["solved"] == 0.0  # gsm_symbolic's credit for a number


def test_missing_answer_scores_zero_and_missing_entry_raises():
    (task,) = reasoning_gym_tasks(1, dataset="basic_arithmetic")
    assert reasoning_gym_score(_trajectory(task, None), task).total == 0.0
    assert reasoning_gym_score(_trajectory(task, "  "), task).total == 0.0
    bare = Task(id="x", env="reasoning_gym", prompt="1+1?", answer="2")
    with pytest.raises(ValueError, match="no metadata\\['entry'\\]"):
        reasoning_gym_score(_trajectory(bare, "Answer: 2"), bare)


def test_a_scorer_that_raises_goes_through_on_error_never_a_silent_zero():
    from rlvr.rewards.scoring import RewardError, RewardTerm, Scorer

    (task,) = reasoning_gym_tasks(1, dataset="prime_factorization")  # its scorer raises on non-numbers
    with pytest.raises(ValueError):
        reasoning_gym_score(_trajectory(task, "Answer: xyz"), task)
    term = RewardTerm("reasoning_gym", reasoning_gym_score)
    traj = _trajectory(task, "Answer: xyz")
    with pytest.raises(RewardError, match=rf"reward 'reasoning_gym' on task '{task.id}', trajectory '{traj.id}'"):
        asyncio.run(Scorer([term]).score(traj, task))
    assert asyncio.run(Scorer([term], on_error="drop").score(_trajectory(task, "Answer: xyz"), task)) is None
    right = asyncio.run(Scorer([term], on_error="drop").score(_trajectory(task, f"Answer: {task.answer}"), task))
    assert right.reward == 1.0


@pytest.mark.parametrize("text, answer", [
    ("<answer>a</answer> then <answer> b </answer>", "b"),
    ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
    ("Steps\nFinal answer: 42\nThanks", "42"),
    ("Steps\n**Answer:** 42.", "42."),
    ("Steps\nAnswer:\n1 2\n3 4\n\nDone.", "1 2\n3 4"),
    ("The answer is below\n\n17\n", "17"),
    ("", None),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(ModuleNotFoundError, match="pip install reasoning-gym"):
        reasoning_gym_tasks(1)


def _env(tools):
    (task,) = reasoning_gym_tasks(1, dataset="basic_arithmetic", tools=tools)
    return ReasoningGymEnv(task)


def test_no_tools_by_default():
    messages, tools = _env([]).reset()
    assert tools == [] and messages[0]["role"] == "system" and "Answer:" in messages[0]["content"]


def test_calculator_attached_on_request():
    env = _env(["calculator"])
    _, tools = env.reset()
    assert [t["function"]["name"] for t in tools] == ["calculate"]
    call = ToolCall(name="calculate", arguments={"expression": "6 * 7"})
    asyncio.run(env.step([call]))
    assert call.result == "42"


def test_python_attached_on_request():
    env = _env(["python", "calculator"])
    assert {"run_python", "calculate"} <= env.tool_names


def test_unknown_tool_in_a_task_fails_clearly():
    (task,) = reasoning_gym_tasks(1, dataset="basic_arithmetic")
    task = task.model_copy(update={"metadata": {**task.metadata, "tools": ["abacus"]}})
    with pytest.raises(ValueError, match="unknown reasoning_gym tool 'abacus'"):
        ReasoningGymEnv(task).reset()
