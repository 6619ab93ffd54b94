"""Realistic tool conditions (env.conditions): transient failures, a per-call cost, tasks that need no tool;
the behaviour metrics that explain them, paired bootstrap intervals and the random-reward control."""

import asyncio
import random

import pytest

from rlvr.core.config import AlgorithmConfig, RewardsConfig, load_config
from rlvr.core.contract import Group, Task, ToolCall, ToolCallError, Trajectory
from rlvr.envs.calculator import NO_TOOL_TEMPLATES, CalculatorEnv
from rlvr.envs.conditions import TRANSIENT_ERRORS, UnreliableTools, with_transient_failures
from rlvr.envs.python import PythonEnv
from rlvr.envs.sql import SqlEnv
from rlvr.stages.evaluate import (behaviour, difference_table, differences_by_need, success_differences,
                                  summarize)
from rlvr.rewards.scoring import Scorer
from rlvr.core.stats import hierarchical_bootstrap, paired_bootstrap, wilson_interval
from rlvr.core.tasks import env_tasks

TASK = CalculatorEnv.tasks(1, seed=0)[0]


def _calls(n):
    return [ToolCall(name="calculate", arguments={"expression": "6 * 7"}, raw=f"call {i}") for i in range(n)]


def _run(env, calls):
    return asyncio.run(env.step(calls)).calls


def test_transient_failures_follow_the_seed_and_rate():
    make = with_transient_failures(CalculatorEnv, 0.3)
    first = [c.error for c in _run(make(TASK, seed=11), _calls(200))]
    assert first == [c.error for c in _run(make(TASK, seed=11), _calls(200))]  # replays exactly
    assert first != [c.error for c in _run(make(TASK, seed=12), _calls(200))]
    # call k fails when Random(f"{seed}/{k}").random() < rate: by hand
    expected = [ToolCallError.transient if random.Random(f"11/{k}").random() < 0.3 else None for k in range(200)]
    assert first == expected and 40 <= first.count(ToolCallError.transient) <= 80
    results = _run(make(TASK, seed=11), _calls(200))
    for call in results:
        if call.error == ToolCallError.transient:
            assert call.result in {e.format(tool="calculate") for e in TRANSIENT_ERRORS}
        else:
            assert call.result == "42"
    assert with_transient_failures(CalculatorEnv, 0.0) is CalculatorEnv
    with pytest.raises(ValueError, match="failure_rate"):
        with_transient_failures(CalculatorEnv, 1.0)


def test_a_failed_call_never_reaches_the_env_and_other_errors_stay_the_envs():
    env = UnreliableTools(SqlEnv(SqlEnv.tasks(1)[0], seed=0), failure_rate=0.999, seed=0)
    parse_error = ToolCall(raw="<tool_call>{", error=ToolCallError.parse, result="could not parse")
    unknown = ToolCall(name="nope", raw="x")
    query = ToolCall(name="run_query", arguments={"sql": "SELECT 1"}, raw="y")
    calls = _run(env, [parse_error, unknown, query])
    assert calls[0].error == ToolCallError.parse and calls[0].result == "could not parse"
    assert calls[1].error == ToolCallError.unknown_tool
    assert calls[2].error == ToolCallError.transient and env.final_state() == {"result": None}  # nothing ran
    assert env.attempts == 1 and "run_query" in env.tool_names  # unknown tools draw no failure


def test_call_cost_is_a_negative_weight_reward_and_not_part_of_success():
    scorer = Scorer.from_config(RewardsConfig(), CalculatorEnv, call_cost=0.05)
    assert [(t.name, t.weight) for t in scorer.terms] == [("numeric_answer", 1.0), ("tool_call_validity", 0.0),
                                                          ("tool_calls", -0.05)]
    trajectory = Trajectory(id="t/0", task_id=TASK.id, group_id=TASK.id, prompt_ids=[1], completion_ids=[2],
                            loss_mask=[1], logprobs=[0.0], tool_calls=_calls(3), final_answer=str(TASK.answer))
    scored = asyncio.run(scorer.score(trajectory, TASK))
    assert scored.reward == pytest.approx(1.0 - 3 * 0.05) and scored.reward_components["tool_calls"] == 3.0
    assert [t.name for t in Scorer.from_config(RewardsConfig(), CalculatorEnv).terms] == ["numeric_answer",
                                                                                          "tool_call_validity"]


def test_unnecessary_calls_cost_only_on_tasks_that_need_no_tool():
    no_tool = env_tasks(CalculatorEnv, 8, 0, "train", {}, 0.5)
    needs_none = next(t for t in no_tool if t.metadata.get("needs_tool") is False)
    scorer = Scorer.from_specs({"numeric_answer": 1.0, "unnecessary_calls": -0.1})
    for task, cost in ((needs_none, 2 * 0.1), (TASK, 0.0)):
        trajectory = Trajectory(id="t/0", task_id=task.id, group_id=task.id, prompt_ids=[1], completion_ids=[2],
                                loss_mask=[1], logprobs=[0.0], tool_calls=_calls(2), final_answer=str(task.answer))
        scored = asyncio.run(scorer.score(trajectory, task))
        assert scored.reward == pytest.approx(1.0 - cost)


@pytest.mark.parametrize("env", [CalculatorEnv, PythonEnv])
def test_no_tool_tasks_are_mixed_in_by_fraction_and_seed(env):
    tasks = env_tasks(env, 40, seed=2, split="train", options={}, no_tool_fraction=0.25)
    direct = [t for t in tasks if t.metadata.get("needs_tool") is False]
    assert len(tasks) == 40 and len(direct) == 10 and all(t.gold_calls == [] for t in direct)
    assert tasks == env_tasks(env, 40, seed=2, split="train", options={}, no_tool_fraction=0.25)
    assert all(isinstance(t.answer, int) for t in direct) and len({t.id for t in tasks}) == 40
    assert env_tasks(env, 8, seed=2, split="train", options={}) == env.tasks(8, seed=2, split="train")


def test_no_tool_wording_of_the_test_split_is_the_held_out_family():
    test = CalculatorEnv.no_tool_tasks(30, seed=0, split="test")
    stems = [t.split("{")[0] for t in NO_TOOL_TEMPLATES["train"]]
    assert all(t.metadata["family"] == "heldout" for t in test)
    assert not any(t.prompt.startswith(s) for t in test for s in stems)
    for t in CalculatorEnv.no_tool_tasks(30, seed=0):  # the answer is in the text, or a sum below 10
        assert str(t.answer) in t.prompt or t.answer < 10


def test_an_env_without_no_tool_tasks_is_refused_by_name():
    with pytest.raises(ValueError, match="env 'sql' has no no_tool_tasks"):
        env_tasks(SqlEnv, 4, seed=0, split="train", options={}, no_tool_fraction=0.5)


def _trajectory(task, i, success, calls=()):
    return Trajectory(id=f"{task.id}/{i}", task_id=task.id, group_id=task.id, prompt_ids=[1], completion_ids=[2],
                      loss_mask=[1], logprobs=[0.0], reward=success, reward_components={"numeric_answer": success},
                      tool_calls=list(calls))


def test_behaviour_metrics_by_hand():
    tool_task = Task(id="a", env="calculator", prompt="?")
    direct = Task(id="b", env="calculator", prompt="?", metadata={"needs_tool": False})
    ok = ToolCall(name="calculate", arguments={"expression": "1"}, raw="x", result="1")
    failed = ToolCall(name="calculate", arguments={"expression": "1"}, raw="x", error=ToolCallError.transient,
                      result="Error 503")
    moved_on = ToolCall(name="calculate", arguments={"expression": "2"}, raw="x", result="2")
    bad = ToolCall(name="calculate", raw="x", error=ToolCallError.bad_arguments, result="bad")
    groups = [Group(id="a", task=tool_task, trajectories=[
        _trajectory(tool_task, 0, 1.0, [failed, ok]),  # retried and recovered
        _trajectory(tool_task, 1, 0.0, [failed, moved_on]),  # moved on to another call: no retry
        _trajectory(tool_task, 2, 0.0, [bad, ok]),  # an error, no recovery
        _trajectory(tool_task, 3, 1.0, [ok])]),
        Group(id="b", task=direct, trajectories=[_trajectory(direct, 0, 1.0, [ok]), _trajectory(direct, 1, 1.0)])]
    assert behaviour(groups, ["numeric_answer"]) == {
        "trajectories_with_tool_errors": 3, "recovery_rate": pytest.approx(1 / 3), "transient_failures": 2,
        "retry_rate": 0.5, "no_tool_trajectories": 2, "unnecessary_call_rate": 0.5,
        "no_tool_success_rate": 1.0, "tool_task_success_rate": 0.5,
        "hallucinated_calls_per_trajectory": pytest.approx(2 / 6)}  # the rejected call, the call on the direct task
    report = summarize(groups, ["numeric_answer"], samples=1, seconds=1.0)
    assert report["outcomes"] == {"a": 0.5, "b": 1.0}
    clean = behaviour([], ["numeric_answer"])
    assert clean["recovery_rate"] is None and clean["unnecessary_call_rate"] is None
    assert clean["tool_task_success_rate"] is None  # without tasks that need no tool it is the success rate


def test_paired_bootstrap_by_hand():
    same = {str(i): float(i % 2) for i in range(50)}
    assert paired_bootstrap(same, same) == {"diff": 0.0, "low": 0.0, "high": 0.0, "tasks": 50.0}
    # b solves 10 more of 100 tasks than a: the difference is +0.10; its interval is the spread of a
    # binomial mean over 100 draws from {0: 90, +1: 10}, +-1.96 * sqrt(0.1 * 0.9 / 100) ~ +-0.059
    a = {str(i): 0.0 for i in range(100)}
    b = {str(i): float(i < 10) for i in range(100)}
    d = paired_bootstrap(a, b, seed=3)
    assert d["diff"] == pytest.approx(0.10) and 0.03 <= d["low"] <= 0.06 and 0.14 <= d["high"] <= 0.17
    assert paired_bootstrap(a, {**b, "extra": 1.0})["tasks"] == 100  # only shared tasks are paired
    with pytest.raises(ValueError, match="share no task"):
        paired_bootstrap({"x": 1.0}, {"y": 1.0})
    table = difference_table(success_differences({"SFT": {"outcomes": a}, "RL": {"outcomes": b}}, [("SFT", "RL")], seed=3))
    assert table.splitlines()[2].startswith("| RL - SFT | +10.0 | [+")


def test_hierarchical_bootstrap_holds_the_seed_spread():
    """Two seeds whose every task differs by +0.1 and by +0.3: no task-to-task spread, so the interval is
    the spread of the seeds alone: a draw of two runs is (0.1, 0.1) with probability 1/4, mixed 1/2, (0.3,
    0.3) 1/4, so the 2.5% and 97.5% points are 0.1 and 0.3 around the mean 0.2. A bootstrap over the tasks
    pooled would give [0.2, 0.2]-ish and hide that one seed gained three times the other's."""
    zero = {str(i): 0.0 for i in range(40)}
    runs = [(zero, {t: 0.1 for t in zero}), (zero, {t: 0.3 for t in zero})]
    d = hierarchical_bootstrap(runs, resamples=4000, seed=1)
    assert d["diff"] == pytest.approx(0.2) and d["runs"] == 2 and d["tasks"] == 80
    assert d["low"] == pytest.approx(0.1) and d["high"] == pytest.approx(0.3)
    # one run: the same difference as the paired bootstrap, and about its interval
    a = {str(i): 0.0 for i in range(100)}
    b = {str(i): float(i < 10) for i in range(100)}
    one, paired = hierarchical_bootstrap([(a, b)], seed=3), paired_bootstrap(a, b, seed=3)
    assert one["diff"] == pytest.approx(paired["diff"]) and abs(one["low"] - paired["low"]) <= 0.02
    with pytest.raises(ValueError, match="share no task in run 1"):
        hierarchical_bootstrap([(a, b), ({"x": 1.0}, {"y": 1.0})])


def test_differences_split_tool_and_no_tool_tasks():
    """Overall +50 points is +0 on the tool tasks and +100 on the no-tool ones: the split shows which."""
    tasks = [Task(id=i, env="calculator", prompt="", metadata={"needs_tool": not i.startswith("n")})
             for i in ("t1", "t2", "n1", "n2")]
    reports = {"SFT": {"outcomes": {"t1": 1.0, "t2": 0.0, "n1": 0.0, "n2": 0.0}},
               "RL": {"outcomes": {"t1": 1.0, "t2": 0.0, "n1": 1.0, "n2": 1.0}}}
    d = differences_by_need(reports, [("SFT", "RL")], tasks)
    assert list(d) == ["RL - SFT", "RL - SFT (tool tasks)", "RL - SFT (no-tool tasks)"]
    assert d["RL - SFT"]["diff"] == 0.5 and d["RL - SFT"]["tasks"] == 4
    assert d["RL - SFT (tool tasks)"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "tasks": 2.0}
    assert d["RL - SFT (no-tool tasks)"] == {"diff": 1.0, "low": 1.0, "high": 1.0, "tasks": 2.0}
    assert list(differences_by_need(reports, [("SFT", "RL")], tasks[:2])) == ["RL - SFT"]  # all need the tool


def test_differences_split_demonstrated_and_undemonstrated_kinds():
    """With demonstrations of kind "x" only: RL's +50 points on the tool tasks is +0 on kind x and +100 on
    kind y, which no demonstration showed; no-tool tasks belong to neither part."""
    tasks = [Task(id=i, env="calculator", prompt="", metadata={"kind": k, "needs_tool": k != "no tool"})
             for i, k in (("x1", "x"), ("x2", "x"), ("y1", "y"), ("y2", "y"), ("n1", "no tool"))]
    reports = {"SFT": {"outcomes": {"x1": 1.0, "x2": 0.0, "y1": 0.0, "y2": 0.0, "n1": 0.0}},
               "RL": {"outcomes": {"x1": 1.0, "x2": 0.0, "y1": 1.0, "y2": 1.0, "n1": 0.0}}}
    d = differences_by_need(reports, [("SFT", "RL")], tasks, demonstrated_kinds={"x"})
    assert list(d) == ["RL - SFT", "RL - SFT (tool tasks)", "RL - SFT (no-tool tasks)",
                       "RL - SFT (demonstrated kinds)", "RL - SFT (undemonstrated kinds)"]
    assert d["RL - SFT (demonstrated kinds)"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "tasks": 2.0}
    assert d["RL - SFT (undemonstrated kinds)"] == {"diff": 1.0, "low": 1.0, "high": 1.0, "tasks": 2.0}
    # every kind demonstrated, or none known: no split
    assert len(differences_by_need(reports, [("SFT", "RL")], tasks, demonstrated_kinds={"x", "y"})) == 3
    assert len(differences_by_need(reports, [("SFT", "RL")], tasks)) == 3


def test_wilson_interval_by_hand():
    low, high = wilson_interval(0.5, 100)  # centre 0.5, half width 1.96 * sqrt(0.25/100 + 1.96^2/40000)/(1.0384)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0.0, 10)[0] == 0.0 and wilson_interval(1.0, 10)[1] == 1.0


def test_conditions_config_and_the_shuffled_reward_control():
    cfg = load_config(None, ["env.conditions.failure_rate=0.3", "env.conditions.no_tool_fraction=0.25",
                             "env.conditions.call_cost=0.05", "algorithm.shuffle_rewards=true"])
    assert cfg.env.conditions.failure_rate == 0.3 and cfg.algorithm.shuffle_rewards
    with pytest.raises(Exception, match="failure_rate"):
        load_config(None, ["env.conditions.failure_rate=1.5"])
    from rlvr.training.advantages import make_batch

    tasks = [Task(id=f"t{k}", env="calculator", prompt="?") for k in range(4)]
    groups = [Group(id=t.id, task=t, trajectories=[_trajectory(t, i, float(i == k % 4)) for i in range(4)])
              for k, t in enumerate(tasks)]
    plain, _ = make_batch(groups, AlgorithmConfig())
    shuffled, metrics = make_batch(groups, AlgorithmConfig(shuffle_rewards=True))
    assert metrics["reward/mean"] == 0.25  # logged rewards stay the real ones
    rewards = [a[0] for a in shuffled.advantages]
    assert rewards != [a[0] for a in plain.advantages]  # the permutation moved some rewards between groups
    assert shuffled.advantages == make_batch(groups, AlgorithmConfig(shuffle_rewards=True))[0].advantages


def test_rl_tasks_take_their_own_options_and_no_tool_share_while_held_out_tasks_keep_the_env_s():
    """data.options / data.no_tool_fraction shape RL's training tasks only: answer-only tasks in the 'field'
    wording with no no-tool tasks, while the held-out tasks stay in the held-out wording with a quarter
    needing no tool."""
    from rlvr.core.config import ConfigError
    from rlvr.envs.calculator import TEMPLATES
    from rlvr.rollout.sources import EnvSource

    cfg = load_config(None, ["env.name=calculator", "env.conditions.no_tool_fraction=0.25", "data.train_tasks=40",
                             "eval.tasks=40", "eval.every=1", "data.options={family: field}",
                             "data.no_tool_fraction=0"])
    source = EnvSource(cfg, backend=None)  # tasks resolve before any model loads
    field = {t.text.split("{")[0] for t in TEMPLATES["field"]}
    assert all(t.metadata["family"] == "field" and t.metadata.get("needs_tool", True) for t in source.sampler.tasks)
    assert any(t.prompt.startswith(tuple(p for p in field if p)) for t in source.sampler.tasks)
    held_out = source.held_out
    assert sum(t.metadata.get("needs_tool") is False for t in held_out) == 10
    assert {t.metadata["family"] for t in held_out if t.metadata.get("needs_tool", True)} == {"heldout"}
    from rlvr.stages.quickstart import _rl_tasks  # what the quickstart report says of RL's tasks

    assert _rl_tasks(cfg) == (" (task options {'family': 'field'}, 0% of them needing no tool, each trajectory "
                              "meeting its own tool failures)")
    assert "the same tool failures" in _rl_tasks(load_config(None, ["rollout.env_randomness=group"]))
    with pytest.raises(ConfigError, match=r"data.options and data.no_tool_fraction shape the env's own training "
                                          r"tasks; data.source is '.*tasks.jsonl'"):
        EnvSource(load_config(None, ["env.name=calculator", "data.source=tasks.jsonl", "data.no_tool_fraction=0"]),
                  backend=None)


def test_the_quickstart_report_states_rl_s_reward_and_anchor():
    from rlvr.stages.quickstart import _rl_objective

    anchored = load_config(None, ["env.name=calculator", "algorithm.beta=0.1", "rewards.functions=[{name: "
                                  "numeric_answer, weight: 1.0}, {name: unnecessary_calls, weight: -0.1}]"])
    assert _rl_objective(anchored) == ("reward: 1 x numeric_answer -0.1 x unnecessary_calls; grpo loss, KL to the "
                                       "SFT start, beta 0.1")
    assert _rl_objective(load_config(None, ["env.name=calculator"])) == ("reward: the calculator env's own success "
                                                                          "test; grpo loss, no KL term")
