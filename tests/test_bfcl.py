import asyncio
import json
import re
import sys

import pytest

pytest.importorskip("bfcl_eval")

from rlvr.core.contract import Task, ToolCall, ToolCallError, Trajectory  # noqa: E402
from rlvr.envs.bfcl import (MULTI_TURN_CATEGORIES, SINGLE_TURN_CATEGORIES, BfclEnv, bfcl_tasks,  # noqa: E402
                            entry_count, format_call, in_split, load_entries, parse_call)
from rlvr.rewards.bfcl import MODEL_NAME, bfcl_ast, bfcl_multi_turn  # noqa: E402


def _trajectory(env: BfclEnv, calls: list[ToolCall]) -> Trajectory:
    return Trajectory(id="t/0", task_id=env.task.id, group_id=env.task.id, prompt_ids=[1], completion_ids=[0],
                      loss_mask=[1], logprobs=[0.0], tool_calls=calls, final_answer="done",
                      final_state=env.final_state())


def _gold(task: Task, turn: int) -> list[ToolCall]:
    return [ToolCall(name=g["name"], arguments=dict(g["arguments"]), turn=turn)
            for g in task.gold_calls if g["turn"] == turn]


def _replay(task: Task, edit=None) -> tuple[BfclEnv, list[ToolCall]]:
    """Play the ground truth turn by turn (`edit(turn, calls)` may change a turn's calls first)."""
    env = BfclEnv(task)
    messages, tools = env.reset()
    assert messages == task.prompt and tools == task.tools
    made = []
    for turn in range(len(task.answer)):
        calls = _gold(task, turn)
        if edit:
            calls = edit(turn, calls)
        if calls:
            result = asyncio.run(env.step(calls))
            assert not result.done
        made += calls
        follow_up = env.next_messages("done")
        assert follow_up == (task.metadata["turns"][turn] if turn < len(task.answer) - 1 else [])
    return env, made


def test_categories_and_splits():
    with pytest.raises(ValueError, match="miss_func.*not supported"):
        bfcl_tasks(1, category="multi_turn_miss_func")
    with pytest.raises(ValueError, match="unknown or unsupported bfcl category 'simple_java'"):
        bfcl_tasks(1, category="simple_java")
    with pytest.raises(ValueError, match="split must be"):
        bfcl_tasks(1, split="dev")
    with pytest.raises(ValueError, match="has 16 entries in split 'all', asked for 17"):
        bfcl_tasks(17, split="all", category="live_parallel")
    assert bfcl_tasks(2, category="simple") == bfcl_tasks(2, category="simple_python")
    # every entry but the one whose ground truth breaks its tools' schemas (see _schema_breaking_entries)
    ids = [e["id"] for e in load_entries("multi_turn_base") if e["id"] != "multi_turn_base_173"]
    n_test = sum(in_split(i, "test") for i in ids)
    train = {t.metadata["id"] for t in bfcl_tasks(len(ids) - n_test, split="train")}
    test = {t.metadata["id"] for t in bfcl_tasks(n_test, split="test")}
    assert train.isdisjoint(test) and len(train | test) == len(ids) and 0 < n_test < len(ids) / 3
    assert (entry_count("multi_turn_base"), entry_count("multi_turn_base", "test")) == (len(ids), n_test)
    assert entry_count("irrelevance") == len(load_entries("irrelevance")) == 240


def test_tasks_are_deterministic_and_complete():
    a, b = bfcl_tasks(5, seed=3), bfcl_tasks(5, seed=3)
    assert a == b and a != bfcl_tasks(5, seed=4)
    task = a[0]
    assert task.id == f"bfcl-{task.metadata['id']}" and task.env == "bfcl"
    assert task.prompt[0]["role"] == "user" and len(task.metadata["turns"]) == len(task.answer) - 1
    assert set(task.metadata) == {"id", "category", "turns", "initial_config", "involved_classes"}
    assert Task.model_validate_json(task.model_dump_json()) == task  # JSON-able, so task files round-trip
    assert BfclEnv.tasks(5, seed=3) == a


@pytest.mark.parametrize("category", ["multi_turn_base", "simple_python", "live_multiple", "parallel_multiple"])
def test_tool_schemas_are_openai_style_json_schema(category):
    jsonschema = pytest.importorskip("jsonschema")
    tasks = bfcl_tasks(20, split="all", category=category)
    for task in tasks:
        for tool in task.tools:
            assert tool["type"] == "function" and set(tool["function"]) == {"name", "description", "parameters"}
            assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", tool["function"]["name"])
            assert tool["function"]["description"].endswith("Note that the provided function is in Python 3 syntax.")
            parameters = tool["function"]["parameters"]
            jsonschema.Draft7Validator.check_schema(parameters)
            assert parameters["type"] == "object" and '"dict"' not in str(parameters).replace("'", '"')


def test_dotted_names_become_underscores():
    task = next(t for t in bfcl_tasks(400, split="all", category="simple")
                if "." in t.metadata["functions"][0]["name"])
    dotted = task.metadata["functions"][0]["name"]
    assert task.tools[0]["function"]["name"] == dotted.replace(".", "_") == task.gold_calls[0]["name"]


@pytest.mark.parametrize("category", MULTI_TURN_CATEGORIES)
def test_replaying_ground_truth_scores_one(category):
    for task in bfcl_tasks(8, seed=1, split="all", category=category):
        env, calls = _replay(task)
        assert all(c.error is None for c in calls), [c.result for c in calls if c.error]
        state = env.final_state()
        assert len(state["calls"]) == len(task.answer) and set(state["state"]) == set(task.metadata["involved_classes"])
        score = bfcl_multi_turn(_trajectory(env, calls), task)
        assert score.total == 1.0, (task.id, score.components)
    assert "bfcl_eval.constants.model_config" in sys.modules
    assert sys.modules["bfcl_eval.constants.model_config"].MODEL_CONFIG_MAPPING[MODEL_NAME].underscore_to_dot


def _last_turn_with_calls(task: Task) -> int:
    return max(g["turn"] for g in task.gold_calls)


def test_missing_wrong_and_unfinished_calls_score_zero():
    task = next(t for t in bfcl_tasks(20, split="all")
                if any(isinstance(v, str) for v in _gold(t, _last_turn_with_calls(t))[-1].arguments.values()))
    last = _last_turn_with_calls(task)

    env, calls = _replay(task, lambda turn, calls: [] if turn == last else calls)  # the last request ignored
    score = bfcl_multi_turn(_trajectory(env, calls), task)
    assert score.total == 0.0 and sum(score.components.values()) == 1.0

    def wrong_argument(turn, calls):
        if turn == last:
            name, arguments = calls[-1].name, calls[-1].arguments
            key = next(k for k, v in arguments.items() if isinstance(v, str))
            calls[-1] = ToolCall(name=name, arguments={**arguments, key: f"{arguments[key]}_wrong"}, turn=turn)
        return calls

    env, calls = _replay(task, wrong_argument)
    assert bfcl_multi_turn(_trajectory(env, calls), task).total == 0.0

    env = BfclEnv(task)  # the episode stops after the first turn: BFCL's "force-terminated"
    calls = _gold(task, 0)
    asyncio.run(env.step(calls))
    score = bfcl_multi_turn(_trajectory(env, calls), task)
    assert score.total == 0.0 and score.components["force_terminated"] == 1.0


def test_env_executes_calls_as_bfcl_does():
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    for task in bfcl_tasks(6, seed=4, split="all"):
        meta = task.metadata
        env = BfclEnv(task)
        for turn in range(len(task.answer)):
            calls = _gold(task, turn)
            asyncio.run(env.step(calls))
            # BFCL's executor keeps its instances between turns, as its checker relies on
            expected, _ = multi_turn_utils.execute_multi_turn_func_call(
                [format_call(c.name, c.arguments) for c in calls], meta["initial_config"],
                meta["involved_classes"], "test_executor", meta["id"])
            assert [c.result for c in calls] == expected, task.id
            env.next_messages("done")
        recorded = env.final_state()["calls"]
        assert [len(turn) for turn in recorded] == [1 if calls else 0 for calls in task.answer]
        for turn, steps in enumerate(recorded):
            parsed = [parse_call(text) for step in steps for text in step]
            gold = [(g["name"], g["arguments"]) for g in task.gold_calls if g["turn"] == turn]
            assert [name for name, _ in parsed] == [name for name, _ in gold]
            assert all(arguments.items() <= made.items() for (_, made), (_, arguments) in zip(parsed, gold))
    for name in [n for n in vars(multi_turn_utils) if n.startswith("test_executor_")]:
        delattr(multi_turn_utils, name)


def test_odd_calls_become_error_results():
    task = next(t for t in bfcl_tasks(10, split="all") if "GorillaFileSystem" in t.metadata["involved_classes"])
    env = BfclEnv(task)
    odd = [ToolCall(name="rm_rf", arguments={}), ToolCall(name="cd", arguments={"folder": "x", "no_such_argument": 1}),
           ToolCall(name="cd", arguments={}), ToolCall(name="cd", arguments={"bad key": 1}),
           ToolCall(name="cd", arguments={"folder": float("nan")}),
           ToolCall(raw="{oops", error=ToolCallError.parse, result="could not parse"),
           ToolCall(name="cd", arguments={"folder": 5}), ToolCall(name="cd", arguments={"folder": "no_such_dir"})]
    asyncio.run(env.step(odd))
    assert odd[0].error == ToolCallError.unknown_tool and "available tools" in odd[0].result
    assert "unknown argument(s) no_such_argument; expected folder" in odd[1].result
    assert "missing argument(s) folder" in odd[2].result
    assert "folder must be string, got int 5" in odd[6].result  # the schema's type, checked before running
    assert {c.error for c in odd[1:5]} | {odd[6].error} == {ToolCallError.bad_arguments}
    assert odd[5].result == "could not parse"
    assert odd[7].error is None and "no_such_dir" in odd[7].result  # the API's own error message
    # only the call that reached the API is recorded (BFCL would run it too)
    assert env.final_state()["calls"] == [[["cd(folder='no_such_dir')"]]]


def test_state_key_follows_api_state_hidden_state_and_user_turn():
    task = next(t for t in bfcl_tasks(10, split="all") if "GorillaFileSystem" in t.metadata["involved_classes"])
    env = BfclEnv(task)
    start = env.state_key()
    assert start == BfclEnv(task).state_key()  # deterministic given the task
    keys = [start]
    for call in (ToolCall(name="pwd"), ToolCall(name="mkdir", arguments={"dir_name": "fresh"}),
                 ToolCall(name="cd", arguments={"folder": "fresh"})):
        asyncio.run(env.step([call]))
        assert call.error is None and call.anchor == keys[-1]
        keys.append(env.state_key())
    assert keys[1] == keys[0]  # a read leaves the state as it was
    assert len(set(keys[1:])) == 3  # mkdir changes the files, cd only the (private) current directory
    assert env.final_state()["state"]["GorillaFileSystem"]["root"]
    env.next_messages("done")
    assert env.state_key() != keys[-1]  # same APIs, a new request


def test_api_calls_do_not_share_arguments_with_the_model():
    task = next(t for t in bfcl_tasks(199, split="all") if "TwitterAPI" in t.metadata["involved_classes"])
    env = BfclEnv(task)
    post = ToolCall(name="post_tweet", arguments={"content": "hi", "mentions": ["@a"]})
    asyncio.run(env.step([post]))
    tweet_id = json.loads(post.result)["id"]
    asyncio.run(env.step([ToolCall(name="mention", arguments={"tweet_id": tweet_id, "mentioned_usernames": ["@b"]})]))
    assert post.arguments["mentions"] == ["@a"]  # the API extended its own copy
    assert env.final_state()["calls"][0][0] == ["post_tweet(content='hi',mentions=['@a'],tags=[])"]

    # BFCL's post_tweet shares its default mentions list, which mention() extends: written out, it stays []
    for _ in range(2):
        env = BfclEnv(task)
        post = ToolCall(name="post_tweet", arguments={"content": "no mentions"})
        asyncio.run(env.step([post]))
        assert json.loads(post.result)["mentions"] == []
        tweet_id = json.loads(post.result)["id"]
        asyncio.run(env.step([ToolCall(name="mention", arguments={"tweet_id": tweet_id,
                                                                  "mentioned_usernames": ["@c"]})]))
    assert env.final_state()["calls"][0][0] == ["post_tweet(content='no mentions',tags=[],mentions=[])"]


def test_recorded_calls_must_be_plain_api_calls():
    task = bfcl_tasks(1, seed=0, split="all")[0]
    env, calls = _replay(task)
    trajectory = _trajectory(env, calls)
    trajectory.final_state["calls"][0][0][0] = "__import__('os').system('echo hacked')"
    with pytest.raises(ValueError, match="not a BFCL call string"):
        bfcl_multi_turn(trajectory, task)
    trajectory.final_state["calls"][0][0][0] = "open(file='x', mode='w')"
    with pytest.raises(ValueError, match="names no method"):
        bfcl_multi_turn(trajectory, task)


def test_parse_call_names_positional_arguments():
    assert parse_call("sort('a.txt')", {"sort": ["file_name"]}) == ("sort", {"file_name": "a.txt"})
    assert parse_call("f(x=-1, y=[1, {'a': None}])") == ("f", {"x": -1, "y": [1, {"a": None}]})
    for text in ("f(g(1))", "a.b(1)", "f(**k)", "f(1)"):
        with pytest.raises(ValueError, match="not a BFCL call string"):
            parse_call(text)


@pytest.mark.parametrize("category", ["simple_python", "multiple", "parallel", "parallel_multiple", "live_simple"])
def test_ast_reward_accepts_possible_answers_and_rejects_wrong_arguments(category):
    wrong_checked = 0
    for task in bfcl_tasks(6, seed=2, split="all", category=category):
        env = BfclEnv(task)
        calls = _gold(task, 0)
        result = asyncio.run(env.step(calls))
        assert result.done and result.results == ["recorded"] * len(calls)
        assert bfcl_ast(_trajectory(env, calls), task).total == 1.0, task.id

        first = calls[0]
        plain = [k for k, v in first.arguments.items() if type(v) in (str, int, float)]
        if not plain:
            continue
        value = first.arguments[plain[0]]
        wrong = "something else" if isinstance(value, str) else value + 1000
        changed = [first.model_copy(update={"arguments": {**first.arguments, plain[0]: wrong}})] + calls[1:]
        score = bfcl_ast(_trajectory(env, changed), task)
        assert score.total == 0.0 and sum(score.components.values()) == 1.0, (task.id, score.components)
        wrong_checked += 1
    assert wrong_checked >= 3


def test_ast_reward_failures_and_relevance():
    task = bfcl_tasks(1, split="all", category="simple")[0]
    env = BfclEnv(task)
    assert bfcl_ast(_trajectory(env, []), task).components["wrong_count"] == 1.0
    renamed = [c.model_copy(update={"name": "other"}) for c in _gold(task, 0)]
    assert bfcl_ast(_trajectory(env, renamed), task).components["wrong_function"] == 1.0
    unparsed = [ToolCall(raw="{", error=ToolCallError.parse)]
    assert bfcl_ast(_trajectory(env, unparsed), task).components["unparsed"] == 1.0

    irrelevant = bfcl_tasks(1, split="all", category="irrelevance")[0]
    assert irrelevant.answer is None and irrelevant.gold_calls == []
    env = BfclEnv(irrelevant)
    assert bfcl_ast(_trajectory(env, []), irrelevant).total == 1.0
    call = [ToolCall(name=irrelevant.tools[0]["function"]["name"], arguments={})]
    assert bfcl_ast(_trajectory(env, call), irrelevant).total == 0.0


def test_rewards_refuse_the_wrong_kind_of_task():
    multi, single = bfcl_tasks(1, split="all")[0], bfcl_tasks(1, split="all", category="simple")[0]
    with pytest.raises(ValueError, match="score it with bfcl_multi_turn"):
        bfcl_ast(_trajectory(BfclEnv(multi), []), multi)
    with pytest.raises(ValueError, match="score it with bfcl_ast"):
        bfcl_multi_turn(_trajectory(BfclEnv(single), []), single)
    no_state = _trajectory(BfclEnv(multi), []).model_copy(update={"final_state": None})
    with pytest.raises(ValueError, match="no final_state"):
        bfcl_multi_turn(no_state, multi)
    with pytest.raises(ValueError, match="not a BFCL task"):
        bfcl_ast(no_state, Task(id="x", env="bfcl", prompt="p"))


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "bfcl_eval", None)
    with pytest.raises(ModuleNotFoundError, match="pip install bfcl-eval"):
        bfcl_tasks(1)


def test_all_supported_categories_load():
    for category in SINGLE_TURN_CATEGORIES + MULTI_TURN_CATEGORIES:
        (task,) = bfcl_tasks(1, split="all", category=category)
        assert task.tools and task.metadata["category"] == category


def test_the_env_default_reward_picks_the_checker_by_category():
    from rlvr.rewards.bfcl import bfcl_score

    assert BfclEnv.rewards["bfcl"] == 1.0
    task = bfcl_tasks(1, split="all", category="simple")[0]
    env = BfclEnv(task)
    calls = _gold(task, 0)
    asyncio.run(env.step(calls))
    assert bfcl_score(_trajectory(env, calls), task).total == 1.0
    multi = bfcl_tasks(1, split="all")[0]
    assert bfcl_score(_trajectory(BfclEnv(multi), []), multi).components["force_terminated"] == 1.0


def test_synth_answers_irrelevance_entries_without_a_call():
    """Entries with no gold call reach SFT data as a direct reply that BFCL's checker passes."""
    from rlvr.core.config import load_config
    from rlvr.stages.synth import NO_TOOL_REPLY, Synthesizer

    cfg = load_config(None, ["model.name=tiny-random-llama", "logging.wandb=disabled", "env.name=bfcl",
                             "env.options={category: irrelevance}", "synth.tasks=3"])
    synthesizer = Synthesizer(cfg)
    records = synthesizer.run(synthesizer.tasks())
    assert len(records) == 3 and {r["source"] for r in records} == {"direct"} and {r["reward"] for r in records} == {1.0}
    assert records[0]["messages"][-1] == {"role": "assistant", "content": NO_TOOL_REPLY}
