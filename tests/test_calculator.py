import asyncio
import re
import time

import pytest

from rlvr.core.contract import Task, ToolCall, ToolCallError
from rlvr.envs.base import ToolEnv, tool
from rlvr.envs.calculator import SHAPES, TEMPLATES, CalculationError, CalculatorEnv, calculator_tasks, evaluate


@pytest.mark.parametrize("expr, value", [
    ("2 + 3 * 4", 14), ("(1234 + 56) * 7", 9030), ("10 / 4", 2.5), ("10 / 5", 2), ("-3 ** 2", -9),
    ("2^10", 1024), ("1,234 * 2", 2468), ("17 // 5 % 3", 0), ("1.5 * 4", 6),
])
def test_evaluate(expr, value):
    assert evaluate(expr) == value


@pytest.mark.parametrize("expr, message", [
    ("1 / 0", "division by zero"), ("9 ** 9 ** 9", "exponent"), ("__import__('os')", "unsupported syntax"),
    ("x + 1", "unknown name 'x'"), ("2 +", "syntax error"), ("", "empty"), ("10 ** 20", "too large"),
    ("(-8) ** 0.5", "no real finite value"), ("1" * 300, "longer than"), ("[1]", "unsupported syntax"),
])
def test_bad_expressions_say_what_is_wrong(expr, message):
    with pytest.raises(CalculationError, match=message):
        evaluate(expr)


def _pattern(template):
    """A regular expression matching the prompts of one template."""
    text = re.escape(template.text)
    for slot in ("a", "b", "c", "item"):
        text = text.replace(re.escape("{" + slot + "}"), r"\S+")
    return re.compile(text)


def test_tasks_are_deterministic_integer_and_families_are_disjoint():
    a, b = calculator_tasks(20, seed=3), calculator_tasks(20, seed=3)
    assert a == b and a != calculator_tasks(20, seed=4)
    assert all(isinstance(t.answer, int) for t in a)
    train_patterns = [_pattern(t) for t in TEMPLATES["train"]]
    assert all(any(p.fullmatch(t.prompt) for p in train_patterns) for t in calculator_tasks(50, family="train"))
    held = calculator_tasks(200, family="heldout", split="test")
    assert not any(p.fullmatch(h.prompt) for h in held for p in train_patterns)
    assert held[0].id.startswith("calculator-test-")


def test_shapes_select_templates_by_solution_and_both_families_cover_every_shape():
    assert SHAPES == ("a + (b * c)", "a - (b * c)", "a * (b + c)", "(a * b) - c", "(a / b) + c")
    assert {t.shape for t in TEMPLATES["heldout"]} == set(SHAPES)
    tasks = CalculatorEnv.tasks(30, seed=1, shapes=["a * (b + c)", "(a / b) + c"])
    assert {t.metadata["kind"] for t in tasks} == {"a * (b + c)", "(a / b) + c"}
    for t in tasks:  # the shape is the gold solution: its second call applies the first's result
        first, second = (g["arguments"]["expression"] for g in t.gold_calls)
        assert ("+" in first) == (t.metadata["kind"] == "a * (b + c)") and ("/" in first) != ("+" in first)
    assert calculator_tasks(20, seed=3) == calculator_tasks(20, seed=3, shapes=list(SHAPES))
    with pytest.raises(ValueError, match=r"shapes \['a \* b'\]: choose among 'a \+ \(b \* c\)'"):
        calculator_tasks(2, shapes=["a * b"])


def test_wordings_per_shape_keeps_the_first_templates_of_each_shape():
    one = calculator_tasks(60, seed=2, wordings_per_shape=1)
    assert {t.metadata["kind"] for t in one} == set(SHAPES)
    first_of_each = [next(t for t in TEMPLATES["train"] if t.shape == shape) for shape in SHAPES]
    assert all(any(_pattern(t).fullmatch(task.prompt) for t in first_of_each) for task in one)
    assert calculator_tasks(20, seed=3, wordings_per_shape=3) == calculator_tasks(20, seed=3)  # none has more
    with pytest.raises(ValueError, match="wordings_per_shape must be at least 1"):
        calculator_tasks(2, wordings_per_shape=0)


def test_gsm_family_is_gsm8k_wording_scored_as_the_generator_scores_it():
    reasoning_gym = pytest.importorskip("reasoning_gym")
    from rlvr.core.contract import Trajectory
    from rlvr.envs.calculator import GSM_MAX_COMPUTATIONS, GSM_SUFFIX, gsm_symbolic_tasks
    from rlvr.rewards.answer import numeric_answer

    tasks = CalculatorEnv.tasks(8, seed=5, split="test", family="gsm")
    assert tasks == gsm_symbolic_tasks(8, seed=5, split="test") != gsm_symbolic_tasks(8, seed=6, split="test")
    assert len({t.id for t in tasks}) == 8 and tasks[0].id == "calculator-test-gsm-5-0"
    generator_seed = tasks[0].metadata["gsm_symbolic"]["seed"]
    dataset = reasoning_gym.create_dataset("gsm_symbolic", size=tasks[-1].metadata["gsm_symbolic"]["index"] + 1,
                                           seed=generator_seed)
    for task in tasks:  # the generator's problem without its suffix, its integer answer, a short solution
        entry = dataset[task.metadata["gsm_symbolic"]["index"]]
        assert entry["question"] == task.prompt + GSM_SUFFIX and task.gold_calls is None
        assert entry["metadata"]["answer_cot"].count("=") <= GSM_MAX_COMPUTATIONS
        assert task.metadata["family"] == "gsm" and isinstance(task.answer, int)
        for answer in (str(task.answer), str(task.answer + 1)):  # solved where the generator's scorer gives 1
            trajectory = Trajectory(id="t", task_id=task.id, group_id="g", prompt_ids=[1], completion_ids=[0],
                                    loss_mask=[1], logprobs=[0.0], final_answer=f"The answer is {answer}.")
            assert numeric_answer(trajectory, task) == float(dataset.score_answer(answer, entry) == 1.0)
    train = gsm_symbolic_tasks(24, seed=5)  # the test split's templates are never trained on
    assert {t.metadata["kind"] for t in tasks}.isdisjoint(t.metadata["kind"] for t in train)
    with pytest.raises(ValueError, match="no shapes or wordings_per_shape"):
        CalculatorEnv.tasks(2, family="gsm", shapes=["a + (b * c)"])


def _run(env, calls):
    return asyncio.run(env.step(calls))


def test_env_reset_and_step():
    task = calculator_tasks(1)[0]
    env = CalculatorEnv(task)
    messages, tools = env.reset()
    assert messages[-1] == {"role": "user", "content": task.prompt}
    assert tools[0]["function"]["name"] == "calculate"
    assert tools[0]["function"]["parameters"]["required"] == ["expression"]
    calls = [ToolCall(name="calculate", arguments={"expression": "6 * 7"}),
             ToolCall(name="calculate", arguments={"expression": "1/0"}),
             ToolCall(name="calculate", arguments={"expr": "1"}),
             ToolCall(name="calculate", arguments={"expression": 12}),
             ToolCall(name="search", arguments={}),
             ToolCall(raw="{bad", error=ToolCallError.parse, result="could not parse")]
    result = _run(env, calls)
    assert result.results[0] == "42" and calls[0].error is None and calls[0].latency_s >= 0
    assert calls[1].error == ToolCallError.raised and "division by zero" in calls[1].result
    assert calls[2].error == ToolCallError.bad_arguments and "unknown argument(s) expr" in calls[2].result
    assert calls[3].error == ToolCallError.bad_arguments and "must be str" in calls[3].result
    assert calls[4].error == ToolCallError.unknown_tool
    assert calls[5].result == "could not parse"


class _SlowEnv(ToolEnv):
    @tool
    def sleep(self, seconds: float) -> str:
        """Sleep.

        Args:
            seconds: how long
        """
        time.sleep(seconds)
        return "woke"

    @tool
    def crash(self) -> str:
        """Raise."""
        raise RuntimeError("tool blew up")


def test_hung_and_crashing_tools_become_error_results_concurrently():
    env = _SlowEnv(Task(id="t", env="slow", prompt="p"), tool_timeout_s=0.3)
    calls = [ToolCall(name="sleep", arguments={"seconds": 5}), ToolCall(name="crash"),
             ToolCall(name="sleep", arguments={"seconds": 0.01})]
    start = time.perf_counter()
    _run(env, calls)
    assert time.perf_counter() - start < 2
    assert calls[0].error == ToolCallError.timeout and "timed out after 0.3 s" in calls[0].result
    assert calls[1].error == ToolCallError.raised and "RuntimeError: tool blew up" in calls[1].result
    assert calls[2].result == "woke"


def test_gold_solutions_reach_the_answer_and_useful_calls_earn_progress():
    for family in TEMPLATES:
        for task in calculator_tasks(20, seed=4, family=family):
            first, second = (g["arguments"]["expression"] for g in task.gold_calls)
            assert evaluate(second) == task.answer > 0 and str(int(evaluate(first))) in second
    task = calculator_tasks(1, seed=4)[0]
    env = CalculatorEnv(task)
    first, second = (g["arguments"]["expression"] for g in task.gold_calls)
    calls = [ToolCall(name="calculate", arguments={"expression": e}, raw="x") for e in (first, "1 + 1", second)]
    asyncio.run(env.step(calls[:1]))
    asyncio.run(env.step(calls[1:]))
    assert [c.scores.get("progress") for c in calls] == [1.0, 0.0, 1.0]  # the gold steps helped, 1 + 1 did not
