"""Built-in rewards, reward plugins (name, module:function, file, entry point) and the scorer's
weights, concurrency and failure policy."""

import asyncio
import importlib
import inspect
import math
import time

import pytest

from rlvr.core.contract import Group, Task, ToolCall, ToolCallError, Trajectory
from rlvr.core.plugins import PluginError
from rlvr.rewards.answer import (answer_format, exact_answer, extract_answer, extract_number, math_equivalence,
                                 numeric_answer)
from rlvr.rewards.base import Score, component_means
from rlvr.rewards.calls import tool_call_validity
from rlvr.rewards.registry import BUILTIN_REWARDS, load_reward, reward_specs
from rlvr.rewards.scoring import RewardError, RewardTerm, Scorer
from rlvr.rewards.state import final_state_match


def _traj(answer=None, calls=(), state=None, finish="stop", i=0):
    return Trajectory(id=f"t/{i}", task_id="t", group_id="t", prompt_ids=[1], completion_ids=[2], loss_mask=[1],
                      logprobs=[0.0], final_answer=answer, tool_calls=list(calls), final_state=state,
                      finish_reason=finish)


def _task(answer=None, expected=None):
    return Task(id="t", env="calculator", prompt="p", answer=answer, expected_state=expected)


@pytest.mark.parametrize("text, answer, number", [
    ("The answer is 1,234.", "1,234.", 1234.0), ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 2.0),
    ("Final answer: 17 boxes\nthanks", "17 boxes", 17.0), ("-3.5", "-3.5", -3.5), ("", None, None),
    ("I multiplied 12 by 3 to get 36", "I multiplied 12 by 3 to get 36", 36.0), ("none here", "none here", None),
])
def test_answer_extraction(text, answer, number):
    assert extract_answer(text) == answer and extract_number(text) == number


def test_numeric_and_exact_answers():
    assert numeric_answer(_traj("It holds 8,638 boxes."), _task(8638)) == 1.0
    assert numeric_answer(_traj("It holds 8,639 boxes."), _task(8638)) == 0.0
    assert numeric_answer(_traj("0.3333333"), _task(1 / 3), rel_tol=1e-6) == 1.0
    assert numeric_answer(_traj(None, finish="max_tokens"), _task(5)) == 0.0  # no answer: the model failed
    assert exact_answer(_traj("Answer: Paris."), _task("paris")) == 1.0
    assert exact_answer(_traj("Answer: Lyon"), _task("paris")) == 0.0
    with pytest.raises(ValueError, match="task t has no ground-truth answer"):
        numeric_answer(_traj("5"), _task(None))
    with pytest.raises(ValueError, match="is not a number"):
        numeric_answer(_traj("5"), _task("five"))


@pytest.mark.parametrize("gold, said, same", [
    ("1/2", "The answer is $\\frac{1}{2}$", True), ("0.5", "\\boxed{\\frac{1}{2}}", True),
    ("\\sqrt{2}", "$2^{1/2}$", True), ("3", "\\boxed{4}", False), ("x^2+2x+1", "$(x+1)^2$", True),
])
def test_math_equivalence_agrees_with_math_verify(gold, said, same):
    from math_verify import parse, verify

    gold_text = f"${gold}$"
    assert verify(parse(gold_text), parse(said)) == same  # math-verify itself (with its SIGALRM timeouts)
    assert math_equivalence(_traj(said), _task(gold)) == float(same)


def test_math_equivalence_runs_outside_the_main_thread():
    scorer = Scorer([RewardTerm("math_verify", load_reward("math_verify"))])
    traj = asyncio.run(scorer.score(_traj("\\boxed{\\frac{2}{4}}"), _task("1/2")))
    assert traj.reward == 1.0


def test_answer_format():
    assert answer_format(_traj("The total is 42."), _task(42)).total == 1.0
    bad = answer_format(_traj("<tool_call>{\"name\": 1", finish="stop"), _task(42))
    assert bad.total == 0.0 and bad.components["no_tool_markup"] == 0.0
    assert answer_format(_traj("many"), _task(42)).components == {"present": 1.0, "no_tool_markup": 1.0, "number": 0.0}
    assert answer_format(_traj("7", finish="max_tokens"), _task(7)).total == 0.0


def test_final_state_match():
    task = _task(expected={"db": {"a": 1}, "result": [[1, "x"]]})
    assert final_state_match(_traj(state={"db": {"a": 1}, "result": [[1, "x"]], "log": ["ignored"]}), task).total == 1.0
    half = final_state_match(_traj(state={"db": {"a": 2}, "result": [[1, "x"]]}), task)
    assert half.total == 0.0 and half.components == {"keys_matched": 0.5}
    with pytest.raises(ValueError, match="has no final_state"):
        final_state_match(_traj(), task)
    with pytest.raises(ValueError, match="has no expected_state"):
        final_state_match(_traj(state={}), _task())


def test_tool_call_validity():
    calls = [ToolCall(name="f", result="1"), ToolCall(raw="{", error=ToolCallError.parse),
             ToolCall(name="x", error=ToolCallError.unknown_tool), ToolCall(name="f", error=ToolCallError.bad_arguments),
             ToolCall(name="f", error=ToolCallError.raised)]  # raised at run time: the call itself was valid
    score = tool_call_validity(_traj("1", calls), _task(1))
    assert score.total == pytest.approx(2 / 5) and score.calls == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert score.components == {"calls": 5.0, "parse": 1.0, "unknown_tool": 1.0, "bad_arguments": 1.0}
    no_calls = tool_call_validity(_traj("1"), _task(1))
    assert no_calls.total == 1.0 and not no_calls.applies and score.applies


def test_a_reward_that_does_not_apply_is_left_out_of_its_logged_mean():
    scorer = Scorer.from_specs({"numeric_answer": 1.0, "tool_call_validity": 0.5})
    with_calls = _traj("7", [ToolCall(name="f", result="1"), ToolCall(raw="{", error=ToolCallError.parse)])
    without = _traj("7")
    for t in (with_calls, without):
        asyncio.run(scorer.score(t, _task(7)))
    assert without.reward == 1.5  # still part of the combined reward
    means = component_means([with_calls.reward_components, without.reward_components])
    assert means["tool_call_validity"] == 0.5 and means["numeric_answer"] == 1.0
    assert means["tool_call_validity/calls"] == 1.0 and "tool_call_validity/not_applicable" not in means
    assert "tool_call_validity" not in component_means([without.reward_components])


# -- plugins -----------------------------------------------------------------------------------------


def test_rewards_load_by_name_module_file_and_entry_point(tmp_path, monkeypatch):
    assert load_reward("numeric_answer") is numeric_answer
    assert load_reward("rlvr.rewards.answer:exact_answer") is exact_answer
    plugin = tmp_path / "my_reward.py"
    plugin.write_text("def shout(trajectory, task):\n    return float(trajectory.final_answer.isupper())\n")
    assert load_reward(f"{plugin}:shout")(_traj("YES"), _task()) == 1.0
    # an installed distribution declaring an entry point in group rlvr.rewards
    dist = tmp_path / "site"
    (dist / "ep_pkg").mkdir(parents=True)
    (dist / "ep_pkg" / "__init__.py").write_text("def length(trajectory, task):\n    return len(trajectory.final_answer)\n")
    info = dist / "ep_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[rlvr.rewards]\nlength = ep_pkg:length\n")
    monkeypatch.syspath_prepend(str(dist))
    assert reward_specs()["length"] == "ep_pkg:length"
    assert load_reward("length")(_traj("four"), _task()) == 4


@pytest.mark.parametrize("spec, message", [
    ("no_such_reward", "unknown reward 'no_such_reward'; built-in and installed: .*numeric_answer"),
    ("rlvr.rewards.answer:nope", "has no attribute 'nope'"),
    ("not_a_module_xyz:f", "cannot import not_a_module_xyz: ModuleNotFoundError"),
    ("/no/such/file.py:f", "no file /no/such/file.py"),
])
def test_bad_reward_specs_say_what_is_wrong(spec, message):
    with pytest.raises(PluginError, match=message):
        load_reward(spec)


def test_a_plugin_file_that_crashes_on_import_is_reported(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(PluginError, match="executing .*broken.py failed: RuntimeError: boom at import"):
        load_reward(f"{plugin}:f")


def test_every_builtin_reward_resolves():
    for name in BUILTIN_REWARDS:
        if name.startswith(("bfcl", "reasoning_gym", "policy")):
            pytest.importorskip(BUILTIN_REWARDS[name].split(":")[0])
        module, function = BUILTIN_REWARDS[name].split(":")
        fn = load_reward(name)
        assert fn is getattr(importlib.import_module(module), function)  # the function the name documents
        assert list(inspect.signature(fn).parameters)[:2] == ["trajectory", "task"], name


# -- the scorer --------------------------------------------------------------------------------------


def test_weighted_sum_with_metrics_and_components():
    scorer = Scorer.from_specs({"numeric_answer": 1.0, "format": 0.5, "tool_call_validity": 0.0})
    traj = asyncio.run(scorer.score(_traj("The total is 42.", [ToolCall(raw="{", error=ToolCallError.parse)]), _task(42)))
    assert traj.reward == 1.5  # validity (0.0 here) is a weight-0 metric
    assert traj.reward_components["tool_call_validity"] == 0.0
    assert traj.reward_components["format/present"] == 1.0 and traj.reward_components["numeric_answer"] == 1.0


def test_product_combination_multiplies_the_weighted_parts_and_gates():
    """tau-bench's way: every part must hold. weight 0 stays a metric; a weight is an exponent."""
    from rlvr.core.config import load_config
    from rlvr.envs.calculator import CalculatorEnv
    from rlvr.rewards.scoring import weighted_product

    assert weighted_product([1.0, 0.0, 2.0], [0.5, 0.0, 0.5]) == pytest.approx(0.125)
    assert weighted_product([1.0, 1.0], [1.0, 0.0]) == 0.0  # a failed gate zeroes everything
    with pytest.raises(ValueError, match="combine=product needs rewards >= 0, got -1"):
        weighted_product([1.0], [-1.0])
    scorer = Scorer.from_specs({"numeric_answer": 1.0, "format": 1.0, "tool_call_validity": 0.0}, combine="product")
    right = asyncio.run(scorer.score(_traj("The total is 42.", [ToolCall(raw="{", error=ToolCallError.parse)]), _task(42)))
    wrong = asyncio.run(scorer.score(_traj("The total is 41."), _task(42)))
    assert right.reward == 1.0 and wrong.reward == 0.0  # the sum would give 2.0 and 1.0
    cfg = load_config(None, ["rewards.combine=product"])
    with pytest.raises(ValueError, match="call_cost subtracts a cost per call; rewards.combine=product multiplies"):
        Scorer.from_config(cfg.rewards, CalculatorEnv, call_cost=0.05)
    with pytest.raises(ValueError, match="combine must be one of sum, product"):
        Scorer.from_specs({"numeric_answer": 1.0}, combine="max")


def test_rewards_run_concurrently_sync_and_async():
    in_flight, peak = 0, 0

    async def slow_async(trajectory, task):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return 1.0

    def slow_sync(trajectory, task):
        time.sleep(0.05)
        return 0.5

    scorer = Scorer([RewardTerm("a", slow_async), RewardTerm("s", slow_sync)])
    group = Group(id="t", task=_task(), trajectories=[_traj("x", i=i) for i in range(16)])
    scored = asyncio.run(scorer.score_group(group))
    assert [t.reward for t in scored.trajectories] == [1.5] * 16
    assert peak == 16  # every trajectory's async reward was in flight at once


def _failing(trajectory, task):
    if trajectory.id == "t/1":
        raise KeyError("missing field 'answer'")
    return 1.0


def test_a_failing_reward_raises_with_task_trajectory_and_exception():
    scorer = Scorer([RewardTerm("strict", _failing)])
    group = Group(id="t", task=_task(), trajectories=[_traj("x", i=i) for i in range(3)])
    with pytest.raises(RewardError, match="reward 'strict' on task 't', trajectory 't/1': KeyError: .*missing field"):
        asyncio.run(scorer.score_group(group))


def test_on_error_drop_excludes_and_counts_never_scores_zero():
    scorer = Scorer([RewardTerm("strict", _failing)], on_error="drop")
    group = Group(id="t", task=_task(), trajectories=[_traj("x", i=i) for i in range(3)])
    scored = asyncio.run(scorer.score_group(group))
    assert [t.id for t in scored.trajectories] == ["t/0", "t/2"] and all(t.reward == 1.0 for t in scored.trajectories)
    assert scorer.stats.dropped == 1 and scorer.stats.scored == 2 and "t/1" in scorer.stats.errors[0]


@pytest.mark.parametrize("returned, message", [
    (None, "returned None; a reward returns a float or a Score"), (float("nan"), "non-finite"),
    (True, "returned True"), ("1.0", "returned '1.0'"), (Score(1.0, calls=[1.0, 1.0]), "credit for 2 calls"),
])
def test_bad_return_values_are_errors(returned, message):
    scorer = Scorer([RewardTerm("odd", lambda t, task: returned)])
    with pytest.raises(RewardError, match=message):
        asyncio.run(scorer.score(_traj("x"), _task()))


def test_a_hanging_reward_times_out():
    async def hang(trajectory, task):
        await asyncio.sleep(30)

    with pytest.raises(RewardError, match="timed out after 0.2 s"):
        asyncio.run(Scorer([RewardTerm("hang", hang)], timeout_s=0.2).score(_traj("x"), _task()))


def test_all_zero_weights_is_a_config_error():
    with pytest.raises(ValueError, match="every reward has weight 0"):
        Scorer.from_specs({"format": 0.0})
    assert math.isclose(Scorer.from_specs([("numeric_answer", 2.0, {"rel_tol": 0.1})]).terms[0].weight, 2.0)
