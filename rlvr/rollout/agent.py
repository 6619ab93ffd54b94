"""The agent loop: G trajectories per task, multi-turn, token-in/token-out, concurrently.

One trajectory:
    prompt_ids = render(opening messages + tool schemas)
    repeat up to max_turns:
        sampled = engine.generate(prompt_ids + completion)      -> loss_mask 1, behaviour log-probs
        calls = parse_tool_calls(decode(sampled))
        no calls -> final answer: stop, unless env.user_turn(...) brings the user's next turn
        hit the token budget -> max_tokens
        results = env.step(calls)                                -> each call bounded by its timeout
        completion += template suffix of the tool (or user) messages -> loss_mask 0, log-prob 0.0
The next input is always the previous ids + the sampled ids + the tool-result ids; the transcript is
never re-tokenised. After each turn the ids are compared with a full re-render of the messages and a
mismatch is counted as drift (`strict_tokens=True` raises instead).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Callable

from rlvr.rollout.chat import ChatRenderer, parse_tool_calls
from rlvr.core.config import RolloutConfig
from rlvr.core.contract import Group, Message, Task, ToolCall, ToolCallError, Trajectory
from rlvr.core.protocols import Engine, SamplingParams
from rlvr.envs.base import ToolEnv
from rlvr.rewards.scoring import Scorer


class PromptTooLongError(ValueError):
    """A task's opening prompt does not fit the engine's context."""


class TokenDriftError(RuntimeError):
    """In strict mode: the token stream differs from a full re-render of the conversation."""


def trajectory_seed(seed: int, task_id: str, index: int) -> int:
    """A stable per-trajectory seed (Python's hash() is salted per process, crc32 is not)."""
    return zlib.crc32(f"{seed}/{task_id}/{index}".encode())


async def rollout_trajectory(task: Task, index: int, engine: Engine, renderer: ChatRenderer,
                             make_env: Callable[..., ToolEnv], settings: RolloutConfig, *,
                             seed: int = 0, policy_version: int = 0) -> Trajectory:
    """Trajectory `index` of `task`'s group. `make_env(task, seed=, tool_timeout_s=)` builds its env
    (an env class fits)."""
    traj_seed = trajectory_seed(seed, task.id, index)
    # env_randomness=group: the whole group shares its first trajectory's env seed
    env_seed = trajectory_seed(seed, task.id, 0) if settings.env_randomness == "group" else traj_seed
    started = time.perf_counter()
    env = make_env(task, seed=env_seed, tool_timeout_s=settings.tool_timeout_s)
    try:
        messages, tools = env.reset()
        prompt_ids = renderer.prompt_ids(messages, tools)
        limit = getattr(engine, "max_context", None)
        if limit is not None and len(prompt_ids) >= limit:  # rlvr train / eval check this before loading, in-process
            raise PromptTooLongError(f"task {task.id}: its opening prompt with {len(tools)} tool schemas is "
                                     f"{len(prompt_ids)} tokens and the engine holds {limit} positions, so nothing "
                                     "is left to answer in (shorten the prompt or tools, or use a longer-context model)")
        completion: list[int] = []
        mask: list[int] = []
        logprobs: list[float] = []
        calls_made: list[ToolCall] = []
        final_answer, finish, drift, turns = None, "max_turns", 0, 0
        for turn in range(settings.max_turns):
            budget = min(settings.max_new_tokens, settings.max_total_tokens - len(completion))
            if budget <= 0:
                finish = "max_tokens"
                break
            params = SamplingParams(max_tokens=budget, temperature=settings.temperature, top_p=settings.top_p,
                                    seed=traj_seed + turn)
            out = await engine.generate(prompt_ids + completion, params)
            start = len(completion)
            completion += out.token_ids
            mask += [1] * len(out.token_ids)
            logprobs += out.logprobs
            turns = turn + 1
            text = renderer.decode(out.token_ids)
            content, calls = parse_tool_calls(text, renderer.format, tools=env.tool_names)
            for call in calls:
                call.turn = turn
            _set_spans(calls, text, out.token_ids, start, renderer)
            messages.append({"role": "assistant", "content": text})
            if out.finish_reason == "length":
                finish = "max_tokens"
                break
            if calls:
                result = await env.step(calls)
                calls_made += calls
                replies: list[Message] = [{"role": "tool", "name": c.name or "", "content": c.result or ""}
                                          for c in calls]
            else:
                final_answer, finish = content, "stop"
                replies = await env.user_turn(messages, content)  # a simulated user's next request, if any
                if not replies:
                    break
            suffix = renderer.suffix_ids(replies, tools)
            if len(completion) + len(suffix) >= settings.max_total_tokens:
                finish = "max_tokens"  # no room left to read the replies and answer
                break
            completion += suffix
            mask += [0] * len(suffix)
            logprobs += [0.0] * len(suffix)
            messages += replies
            if renderer.render_ids(messages, tools, generation_prompt=True) != prompt_ids + completion:
                drift += 1
                if settings.strict_tokens:
                    raise TokenDriftError(f"task {task.id} trajectory {index} turn {turn + 1}: token ids differ "
                                          "from a full re-render of the conversation")
            if calls and result.done:
                finish = "stop"
                break
        return Trajectory(
            id=f"{task.id}/{index}", task_id=task.id, group_id=task.id, policy_version=policy_version, seed=traj_seed,
            env_seed=None if env_seed == traj_seed else env_seed,
            prompt_ids=prompt_ids, completion_ids=completion, loss_mask=mask, logprobs=logprobs,
            tool_calls=calls_made, messages=messages, final_answer=final_answer, final_state=env.final_state(),
            turns=turns, finish_reason=finish,
            metrics={"token_drift_turns": float(drift), "latency_s": time.perf_counter() - started},
        )
    finally:
        env.close()


def _set_spans(calls: list[ToolCall], text: str, ids: list[int], offset: int, renderer: ChatRenderer) -> None:
    """Token span [start, end) of each call inside the completion, from the characters of its raw text."""
    if not calls:
        return
    ends = []  # character length of the decoded prefix after each token
    for k in range(1, len(ids) + 1):
        ends.append(len(renderer.decode(ids[:k])))
    search_from = 0
    for call in calls:
        begin = text.find(call.raw, search_from) if call.raw else -1
        if begin < 0:
            continue
        stop = begin + len(call.raw)
        search_from = stop
        first = next(k for k, e in enumerate(ends) if e > begin)
        last = next((k for k, e in enumerate(ends) if e >= stop), len(ids) - 1)
        call.span = (offset + first, offset + last + 1)


async def replay_tool_calls(trajectory: Trajectory, task: Task, make_env: Callable[..., ToolEnv],
                            tool_timeout_s: float = 10.0) -> list[ToolCall]:
    """Re-execute a recorded trajectory's tool calls, turn by turn, against a fresh env built with the
    trajectory's env seed. Returns the re-derived calls; their `result`s should equal the recorded ones."""
    env_seed = trajectory.seed if trajectory.env_seed is None else trajectory.env_seed
    env = make_env(task, seed=env_seed, tool_timeout_s=tool_timeout_s)
    try:
        env.reset()
        replayed: list[ToolCall] = []
        for turn in sorted({c.turn for c in trajectory.tool_calls if c.turn is not None}):
            calls = [_as_parsed(c) for c in trajectory.tool_calls if c.turn == turn]
            await env.step(calls)
            replayed += calls
        return replayed
    finally:
        env.close()


def _as_parsed(call: ToolCall) -> ToolCall:
    """The call as the parser left it: a parse error stays, everything the env filled in goes."""
    if call.error == ToolCallError.parse:
        return call.model_copy()
    return call.model_copy(update={"result": None, "error": None, "latency_s": None})


async def rollout_group(task: Task, engine: Engine, renderer: ChatRenderer, make_env: Callable[..., ToolEnv],
                        settings: RolloutConfig, *, seed: int = 0, policy_version: int = 0,
                        scorer: Scorer | None = None) -> Group | None:
    """The task's G trajectories. With a `scorer` each trajectory is scored as soon as its rollout ends,
    while the others still generate; trajectories the scorer drops are left out (None if all are)."""

    async def one(i: int) -> Trajectory | None:
        trajectory = await rollout_trajectory(task, i, engine, renderer, make_env, settings, seed=seed,
                                              policy_version=policy_version)
        return await scorer.score(trajectory, task) if scorer else trajectory

    trajectories = [t for t in await asyncio.gather(*(one(i) for i in range(settings.group_size))) if t]
    return Group(id=task.id, task=task, trajectories=trajectories) if trajectories else None


def per_task_seeds(tasks: list[Task], seed: int | list[int]) -> list[int]:
    """A rollout call's seed for each of its tasks: one for all of them, or one each."""
    if isinstance(seed, int):
        return [seed] * len(tasks)
    if len(seed) != len(tasks):
        raise ValueError(f"{len(seed)} seeds for {len(tasks)} tasks")
    return list(seed)


async def rollout_groups(tasks: list[Task], engine: Engine, renderer: ChatRenderer,
                         make_env: Callable[..., ToolEnv], settings: RolloutConfig, *,
                         seed: int | list[int] = 0, policy_version: int = 0,
                         scorer: Scorer | None = None) -> list[Group]:
    """All tasks' groups concurrently: while some trajectories wait on tools or rewards, others generate.
    `seed`: one for all tasks, or one per task (batches that went out together, each with its own)."""
    seeds = per_task_seeds(tasks, seed)
    groups = await asyncio.gather(*(
        rollout_group(t, engine, renderer, make_env, settings, seed=s, policy_version=policy_version,
                      scorer=scorer)
        for t, s in zip(tasks, seeds)))
    return [g for g in groups if g is not None]
