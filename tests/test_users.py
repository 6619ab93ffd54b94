"""Simulated users: the async user turn sees the whole conversation, keeps its turn budget, never blocks other
rollouts, and its tokens are masked like tool results; an LLM user behind an OpenAI-compatible endpoint."""

import asyncio
import time

import pytest

from rlvr.core.contract import Task
from rlvr.core.endpoint import EndpointClient, LocalChat
from rlvr.envs.calculator import CalculatorEnv
from rlvr.envs.users import LLMUser, ScriptedUser
from chat_server import ChatServer


class _Chatty(CalculatorEnv):
    max_user_turns = 2

    def __init__(self, task, seed=0, tool_timeout_s=10.0):
        super().__init__(task, seed, tool_timeout_s)
        self.user = ScriptedUser(["And doubled?", "And tripled?", "never said: over budget"])


def test_the_user_turn_sees_the_conversation_and_keeps_its_budget():
    env = _Chatty(Task(id="t", env="calculator", prompt="What is 2 + 2?"))
    conversation = env.messages() + [{"role": "assistant", "content": "4"}]
    assert asyncio.run(env.user_turn(conversation, "4")) == [{"role": "user", "content": "And doubled?"}]
    assert asyncio.run(env.user_turn(conversation, "8")) == [{"role": "user", "content": "And tripled?"}]
    assert asyncio.run(env.user_turn(conversation, "12")) == []  # max_user_turns spent
    plain = CalculatorEnv(Task(id="t", env="calculator", prompt="?"))
    assert asyncio.run(plain.user_turn(conversation, "4")) == []  # no user: next_messages decides


def test_user_messages_are_masked_in_a_rollout():
    from rlvr.core.config import RolloutConfig
    from rlvr.rollout.agent import rollout_trajectory
    from rlvr.rollout.chat import ChatRenderer
    from rlvr.stages.synth import ScriptedEngine
    from rlvr.training.models import load_tokenizer

    renderer = ChatRenderer(load_tokenizer("tiny-random-llama"))
    task = Task(id="t", env="calculator", prompt="What is 2 + 2?", answer=12)
    engine = ScriptedEngine(renderer, ["It is 4.", "It is 8.", "It is 12."])
    trajectory = asyncio.run(rollout_trajectory(task, 0, engine, renderer, _Chatty, RolloutConfig(max_turns=6)))
    assert [m["role"] for m in trajectory.messages[1:]] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    sampled = renderer.tokenizer.decode([t for t, m in zip(trajectory.completion_ids, trajectory.loss_mask) if m])
    context = renderer.tokenizer.decode([t for t, m in zip(trajectory.completion_ids, trajectory.loss_mask) if not m])
    assert "And doubled?" in context and "And doubled?" not in sampled and "It is 8." in sampled
    assert trajectory.final_answer == "It is 12."


def _user(body, number):
    """Plays the user: asks for 5 more until the agent says 9 (its last words, as the user hears them), then stops."""
    return {"content": "###STOP###" if body["messages"][-1]["content"] == "9." else "Please also add 5."}


def test_an_llm_user_behind_an_endpoint_swaps_roles_stops_and_does_not_block():
    server = ChatServer(_user, delay_s=0.3)
    try:
        user = LLMUser(EndpointClient(server.url), "user-sim", "You want 2 + 2, then 5 more.", seed=7)
        task = Task(id="t", env="calculator", prompt="What is 2 + 2?")
        conversation = [{"role": "system", "content": "Solve."}, {"role": "user", "content": "What is 2 + 2?"},
                        {"role": "assistant", "content": "<tool_call>...</tool_call>"}, {"role": "tool", "content": "4"},
                        {"role": "assistant", "content": "It is 4."}]

        async def two_users_and_a_ticker():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            clock = asyncio.create_task(ticker())
            replies = await asyncio.gather(user.reply(conversation, task), user.reply(conversation, task))
            clock.cancel()
            return replies, ticks

        start = time.perf_counter()
        replies, ticks = asyncio.run(two_users_and_a_ticker())
        assert replies == ["Please also add 5.", "Please also add 5."]
        assert time.perf_counter() - start < 0.55 and ticks > 10  # concurrent, and the loop kept running
        sent = server.requests[0]
        assert sent["seed"] == 7 and sent["model"] == "user-sim"
        # roles swapped; the agent's tool-call turn says nothing to the user and is left out, as is the tool
        assert [m["role"] for m in sent["messages"]] == ["system", "assistant", "user"]
        assert "You want 2 + 2, then 5 more." in sent["messages"][0]["content"]
        conversation += [{"role": "user", "content": "Please also add 5."}, {"role": "assistant", "content": "9."}]
        assert asyncio.run(user.reply(conversation, task)) is None  # the stop phrase ends it
    finally:
        server.close()


class LocalUserEnv(CalculatorEnv):
    """A calculator env whose user is the model the rollout worker serves (rollout.local_chat_model)."""
    max_user_turns = 2

    def __init__(self, task, seed=0, tool_timeout_s=10.0):
        super().__init__(task, seed, tool_timeout_s)
        # sampled (seeded): greedy, the random model writes only newlines, which end the conversation
        self.user = LLMUser(LocalChat(), "", "You want 2 + 2, then 5 more.", seed=seed, temperature=1.0)


def test_without_a_served_user_model_the_local_user_says_what_to_set():
    env = LocalUserEnv(Task(id="t", env="calculator", prompt="?"))  # envs are built where no worker runs too
    with pytest.raises(RuntimeError, match="task 't'.*rollout.local_chat_model"):
        asyncio.run(env.user_turn(env.messages() + [{"role": "assistant", "content": "4"}], "4"))


def test_the_rollout_worker_serves_the_user_model_beside_the_policy(tmp_path):
    from rlvr.core.config import load_config
    from rlvr.rollout.agent import rollout_trajectory
    from rlvr.rollout.workers import RolloutWorker
    from rlvr.stages.synth import ScriptedEngine

    cfg = load_config(None, ["model.name=tiny-random-llama", "rollout.local_chat_model=tiny-random-llama",
                             "env.name=test_users:LocalUserEnv", "rollout.max_turns=4", f"output_dir={tmp_path}"])
    task = Task(id="t", env="calculator", prompt="What is 2 + 2?", answer=4)
    worker = RolloutWorker(cfg)
    try:
        assert worker.chat_engine is not None and worker.chat_engine is not worker.engine

        def converse(seed):  # a scripted policy, the served user model answering it on the worker's loop
            policy = ScriptedEngine(worker.renderer, ["It is 4.", "It is 9.", "Done."])
            return worker.loop.run_until_complete(rollout_trajectory(task, 0, policy, worker.renderer, LocalUserEnv,
                                                                     cfg.rollout, seed=seed))

        first, again, other = converse(3), converse(3), converse(4)
    finally:
        worker.close()
    users = [m["content"] for m in first.messages[2:] if m["role"] == "user"]
    assert len(users) == 2 and all(users)  # the random user model spoke after each answer, within its budget
    tokenizer = worker.renderer.tokenizer
    masked = tokenizer.decode([i for i, m in zip(first.completion_ids, first.loss_mask) if not m])
    sampled = tokenizer.decode([i for i, m in zip(first.completion_ids, first.loss_mask) if m])
    assert users[0][:20] in masked and users[0][:20] not in sampled  # context for the policy, never trained on
    # the trajectory's seed goes with every user request: the same seed replays the same conversation
    assert first.messages == again.messages and first.messages != other.messages
    with pytest.raises(RuntimeError, match="rollout.local_chat_model"):  # closing the worker withdraws its user model
        asyncio.run(LocalChat().chat({"messages": []}, "t"))
