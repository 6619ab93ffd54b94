"""`rlvr synth`: SFT conversations, each verified by the run's own rewards.

A conversation is OpenAI-style: messages with `tool_calls` on assistant turns and `tool` results, plus the
tool schemas. Every source ends the same way: the assistant turns are played through the real agent loop
(`rollout_trajectory`) against a fresh env, so tool results are the env's own, the trajectory is scored
by the run's rewards, and only those scoring at least `synth.threshold` are kept.

- gold (`synth.teacher` unset): tasks that carry `gold_calls` (calculator, support_desk, bfcl). Each gold
  call is one assistant turn, in order; a task's turn (BFCL multi-turn) ends with a short closing message
  stating the last call's result, and the env's next user message follows. A task without gold calls (one
  that needs no tool, a BFCL irrelevance entry) is answered directly: its answer, or a reply that no tool
  fits. Beyond the happy path, `synth.recovery` of the conversations show one call failing first (a
  transient error, or an argument name the env rejects) and the next turn retrying or fixing it, and
  `synth.restraint` of the tasks are drawn from the env's `no_tool_tasks`.
- a local teacher (`synth.teacher` = a model name or directory): `synth.samples` trajectories per task
  sampled with an rlvr engine, in the teacher's own chat template and tool format, the text around the
  tool calls (its reasoning) kept as the turns' content: rejection sampling.
- an endpoint (`synth.teacher` = an http(s) URL of an OpenAI-compatible server, `synth.teacher_model` the
  model it serves): `synth.samples` conversations per task, `synth.concurrency` at a time, chat completions
  with the tools, its tool calls executed by the env, up to `rollout.max_turns`; its turns are then replayed
  through the loop to be scored. The key in the environment variable `synth.api_key_env` is sent as a bearer
  token; 408/429/5xx answers and refused connections are retried `synth.retries` times with exponential
  backoff (or the server's Retry-After); a conversation the endpoint fails (a malformed answer, an error
after the retries) is skipped naming its task, the others are kept, and `rlvr synth` writes them, then
exits 1 listing the failures.

Written as JSON lines {"id", "task_id", "env", "source", "reward", "messages", "tools"}; a conversation
that repeats another of the same task is dropped; so is one with a tool call that does not parse.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import track

from rlvr.rollout.chat import ChatRenderer, parse_tool_calls, rollout_messages, tool_arguments, write_tool_calls
from rlvr.core.config import Config, ConfigError
from rlvr.core.contract import REJECTED_CALLS, Message, Task, ToolCall, ToolCallError, Trajectory
from rlvr.core.protocols import Completion, SamplingParams
from rlvr.core.endpoint import EndpointClient, EndpointError
from rlvr.envs.base import replay_gold
from rlvr.envs.conditions import UnreliableTools
from rlvr.envs.users import ScriptedUser
from rlvr.rollout.agent import rollout_trajectory


class ScriptedEngine:
    """Writes fixed assistant turns: the i-th call to generate returns turn i (then an empty turn)."""

    def __init__(self, renderer: ChatRenderer, turns: list[str]):
        self.end = renderer.turn_end_id
        self.turns = [renderer.tokenizer.encode(t, add_special_tokens=False) + [self.end] for t in turns]

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        ids = self.turns.pop(0) if self.turns else [self.end]
        return Completion(ids, [0.0] * len(ids), "stop")


NO_TOOL_REPLY = "None of the available tools fits this request, so I will not call one."


@dataclass(frozen=True)
class Failure:
    """A scripted failure in a recovery demonstration: gold call `call` is first made and fails, either
    transiently (`kind` "transient": the same call is then retried) or because its first argument carries a
    wrong name that the env rejects ("bad_arguments": the correct call follows)."""

    call: int
    kind: str


def draw_failure(task: Task, seed: int, share: float) -> Failure | None:
    """Whether (with probability `share`, seeded by the task) and where the task's demonstration fails."""
    draw = random.Random(f"{seed}/{task.id}/recovery")
    if not task.gold_calls or draw.random() >= share:
        return None
    call = draw.randrange(len(task.gold_calls))
    kinds = ["transient", "bad_arguments"] if task.gold_calls[call]["arguments"] else ["transient"]
    return Failure(call, draw.choice(kinds))


def misnamed(arguments: dict[str, Any]) -> dict[str, Any]:
    """`arguments` with the first one's name replaced by a generic one a model might guess."""
    first, *_ = arguments
    wrong = "input" if first != "input" else "value"
    return {(wrong if name == first else name): value for name, value in arguments.items()}


async def gold_turns(task: Task, env_cls, format: str, failure: Failure | None = None) -> list[str]:
    """The assistant turns of a task's gold solution: one per gold call, and a closing message per turn
    ("The answer is <the last call's result>." when the task has an answer, else "Done."). The calls are
    run once on a fresh env here to learn the results; the closing message states the result, never the
    task's answer, so a wrong gold solution fails its reward. With a `failure`, its failing call comes
    first (neither kind reaches the env's tools, so the results stay those of the gold calls). A task
    without gold calls gets one turn: its answer, or NO_TOOL_REPLY."""
    if not task.gold_calls:
        return [f"The answer is {task.answer}." if task.answer is not None else NO_TOOL_REPLY]
    env = env_cls(task)
    try:
        env.reset()
        turns: list[str] = []
        for i, ((_, said), gold) in enumerate(zip(await replay_gold(env, task), task.gold_calls)):
            if failure is not None and failure.call == i:
                arguments = misnamed(gold["arguments"]) if failure.kind == "bad_arguments" else gold["arguments"]
                turns.append(write_tool_calls("", [(gold["name"], arguments)], format))
            turns.append(write_tool_calls("", [(gold["name"], gold["arguments"])], format))
            if said is not None:
                turns.append(said)
        return turns
    finally:
        env.close()


def with_user_lines(env_cls, lines: list[str] = ()):
    """`env_cls` whose simulated user, where the env has one, says exactly `lines` (then is done): a replay
    hears the user the recorded conversation heard (none, for gold), not a fresh, differently seeded one."""
    def make(task: Task, seed: int = 0, **kwargs: Any):
        env = env_cls(task, seed=seed, **kwargs)
        if env.user is not None:
            env.user = ScriptedUser(list(lines))
        return env

    return make


async def replay(task: Task, turns: list[str], renderer: ChatRenderer, env_cls, settings, scorer,
                 user_lines: list[str] = ()) -> Trajectory | None:
    """Play `turns` through the agent loop as trajectory 0 of `task` (a simulated user saying `user_lines`),
    scored (None if a reward dropped it)."""
    env_cls = with_user_lines(env_cls, user_lines)
    settings = settings.model_copy(update={"max_turns": len(turns) + 1, "temperature": 0.0,
                                           "max_new_tokens": max(settings.max_new_tokens, 4096),
                                           "max_total_tokens": max(settings.max_total_tokens, 1 << 16)})
    trajectory = await rollout_trajectory(task, 0, ScriptedEngine(renderer, turns), renderer, env_cls, settings)
    return await scorer.score(trajectory, task)


def to_openai(trajectory: Trajectory, format: str, tool_names: set[str]) -> list[Message] | None:
    """The trajectory's messages with tool calls as OpenAI `tool_calls`; None if a call did not parse.
    A turn whose calls the env all rejected (an unknown tool, bad arguments) gets "weight": 0, as in
    OpenAI's fine-tuning format: SFT keeps it as context for the fix that follows but does not train on
    the mistake."""
    out: list[Message] = []
    pending: list[str] = []
    executed = iter(trajectory.tool_calls)
    for m in trajectory.messages:
        if m["role"] == "assistant":
            content, calls = parse_tool_calls(m["content"], format, tool_names)
            if any(c.error == ToolCallError.parse for c in calls):
                return None
            message: Message = {"role": "assistant", "content": content}
            errors = [next(executed).error for _ in calls]
            if errors and all(e in REJECTED_CALLS for e in errors):
                message["weight"] = 0
            if calls:
                ids = [f"call_{len(out)}_{i}" for i in range(len(calls))]
                message["tool_calls"] = [{"id": i, "type": "function",
                                          "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                                         for i, c in zip(ids, calls)]
                pending = ids
            out.append(message)
        elif m["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": pending.pop(0) if pending else "", "name": m.get("name", ""),
                        "content": m["content"]})
        else:
            out.append(dict(m))
    return out


def openai_turns(messages: list[Message], format: str) -> list[str]:
    """The assistant turns of an OpenAI-style conversation, written in the tool `format`."""
    return [m["content"] for m in rollout_messages(messages, format) if m["role"] == "assistant"]


class Synthesizer:
    """Turns tasks into verified conversations (see the module docstring) for one run config."""

    def __init__(self, cfg: Config):
        from rlvr.envs.registry import load_env
        from rlvr.training.models import load_tokenizer
        from rlvr.rewards.scoring import Scorer

        self.cfg = cfg
        self.env = load_env(cfg.env.name)
        self.scorer = Scorer.from_config(cfg.rewards, self.env)
        self.renderer = ChatRenderer(load_tokenizer(cfg.model.name), cfg.rollout.tool_format)

    def tasks(self) -> list[Task]:
        """`synth.tasks` tasks of the env's train split, with `synth.options` over `env.options`;
        `synth.restraint` of them from the env's `no_tool_tasks`."""
        from rlvr.core.tasks import env_tasks

        synth = self.cfg.synth
        if synth.restraint and not hasattr(self.env, "no_tool_tasks"):
            raise ConfigError(f"synth.restraint={synth.restraint:g}: env {self.env.name!r} has no no_tool_tasks() "
                              "to draw tasks that need no tool from")
        return env_tasks(self.env, synth.tasks, self.cfg.seed, "train", {**self.cfg.env.options, **synth.options},
                         synth.restraint)

    def run(self, tasks: list[Task]) -> list[dict[str, Any]]:
        """The kept conversations; `self.skipped` lists (task id, why) for every one that was not kept, and
        `self.failed` the endpoint errors among them (a caller that writes the kept ones then fails)."""
        self.skipped: list[tuple[str, str]] = []
        self.failed: list[str] = []  # endpoint errors, each naming its task
        teacher = self.cfg.synth.teacher
        if teacher is None:
            found = [self._gold(t) for t in track(tasks, description="gold conversations", transient=True)]
        elif teacher.startswith(("http://", "https://")):
            found = asyncio.run(self._endpoint(tasks))
        else:
            found = self._local_teacher(tasks)
        kept = dedupe(r for r in found if r is not None)
        repeated = Counter(r["task_id"] for r in found if r is not None) - Counter(r["task_id"] for r in kept)
        self.skipped += [(task_id, "repeats a conversation kept for the same task")
                         for task_id, n in repeated.items() for _ in range(n)]
        return kept

    def _record(self, task: Task, trajectory: Trajectory | None, format: str, source: str) -> dict[str, Any] | None:
        threshold = self.cfg.synth.threshold
        if trajectory is None or trajectory.reward is None:
            return self._skip(task, "a reward failed on it (rewards.on_error dropped it)")
        if trajectory.reward < threshold:
            return self._skip(task, f"reward {trajectory.reward:.3g} is below synth.threshold={threshold:g}")
        env = self.env(task)
        try:
            messages, tools = to_openai(trajectory, format, env.tool_names), env.tool_schemas()
        finally:
            env.close()
        if messages is None:
            return self._skip(task, "a tool call in it does not parse")
        return {"id": trajectory.id, "task_id": task.id, "env": task.env, "source": source,
                "reward": trajectory.reward, "messages": messages, "tools": tools}

    def _skip(self, task: Task, why: str) -> None:
        self.skipped.append((task.id, why))
        return None

    def _gold(self, task: Task) -> dict[str, Any] | None:
        if not task.gold_calls:
            return self._scripted(task, gold_turns(task, self.env, self.renderer.format), "direct")
        failure = draw_failure(task, self.cfg.seed, self.cfg.synth.recovery)
        if failure is None:
            return self._scripted(task, gold_turns(task, self.env, self.renderer.format), "gold")
        turns = gold_turns(task, self.env, self.renderer.format, failure)
        if failure.kind == "bad_arguments":
            record = self._scripted(task, turns, "gold+bad_arguments")
            if record is not None and not any(m.get("weight") == 0 for m in record["messages"]):
                return self._skip(task, f"the env accepted the misnamed argument {misnamed(task.gold_calls[failure.call]['arguments'])}"
                                        ": no mistake to recover from")
            return record

        def failing(task: Task, seed: int = 0, **kwargs: Any) -> UnreliableTools:
            return UnreliableTools(with_user_lines(self.env)(task, seed=seed, **kwargs), 0.0, seed,
                                   frozenset({failure.call}))

        return self._scripted(task, turns, "gold+transient", failing)

    def _scripted(self, task: Task, turns: Awaitable[list[str]], source: str, env_cls=None) -> dict[str, Any] | None:
        """Replay the assistant turns `turns` resolves to, in an env made by `env_cls` (default: the run's
        env), scored, as a record (or None)."""
        async def play() -> Trajectory | None:
            return await replay(task, await turns, self.renderer, env_cls or self.env, self.cfg.rollout, self.scorer)

        return self._record(task, asyncio.run(play()), self.renderer.format, source)

    def _local_teacher(self, tasks: list[Task]) -> list[dict[str, Any] | None]:
        from rlvr.rollout.workers import RolloutWorker

        synth = self.cfg.synth
        teacher_cfg = self.cfg.model_copy(deep=True)
        teacher_cfg.model.name, teacher_cfg.model.init_adapter = synth.teacher, synth.teacher_adapter
        worker = RolloutWorker(teacher_cfg)
        try:
            settings = self.cfg.rollout.model_copy(update={"group_size": synth.samples})
            groups = worker.rollout(tasks, settings, seed=self.cfg.seed).groups
        finally:
            worker.close()
        return [self._record(g.task, t, worker.renderer.format, f"teacher:{synth.teacher}")
                for g in groups for t in g.trajectories]

    async def _endpoint(self, tasks: list[Task]) -> list[dict[str, Any] | None]:
        """`synth.samples` conversations per task with the endpoint, `synth.concurrency` at a time."""
        from rich.progress import Progress

        synth = self.cfg.synth
        client = EndpointClient(synth.teacher, api_key=os.environ.get(synth.api_key_env) or None,
                                retries=synth.retries)
        limit = asyncio.Semaphore(synth.concurrency)
        with Progress(transient=True) as progress:
            bar = progress.add_task(f"teacher {synth.teacher}", total=len(tasks) * synth.samples)

            async def one(task: Task) -> dict[str, Any] | None:
                async with limit:
                    try:
                        messages = await endpoint_conversation(task, self.env, client, synth.teacher_model,
                                                               self.cfg.rollout.max_turns, synth.temperature)
                    except EndpointError as e:  # the others' conversations are kept; the CLI then fails
                        self.failed.append(str(e))
                        progress.advance(bar)
                        return self._skip(task, f"the endpoint failed: {e}")
                turns = openai_turns(messages, self.renderer.format)
                first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
                heard = [m["content"] for m in messages[first:] if m["role"] == "user"]  # the user's replies
                trajectory = await replay(task, turns, self.renderer, self.env, self.cfg.rollout, self.scorer, heard)
                progress.advance(bar)
                return self._record(task, trajectory, self.renderer.format, f"endpoint:{synth.teacher_model}")

            return await asyncio.gather(*(one(t) for t in tasks for _ in range(synth.samples)))


async def endpoint_conversation(task: Task, env_cls, client: EndpointClient, model: str, max_turns: int,
                                temperature: float) -> list[Message]:
    """A conversation with an OpenAI-compatible chat endpoint, its tool calls executed by a fresh env."""
    env = env_cls(task)
    try:
        messages, tools = env.reset()
        for _ in range(max_turns):
            reply = await client.chat({"model": model, "messages": messages, "tools": tools,
                                       "temperature": temperature}, task.id)
            calls = reply.get("tool_calls") or []
            messages.append({"role": "assistant", "content": reply.get("content") or "",
                             **({"tool_calls": calls} if calls else {})})
            if not calls:
                following = await env.user_turn(messages, reply.get("content") or "")
                if not following:
                    break
                messages += following
                continue
            executed = await env.step([ToolCall(name=c["function"]["name"], arguments=tool_arguments(c["function"]["arguments"]),
                                                raw=json.dumps(c)) for c in calls])
            messages += [{"role": "tool", "tool_call_id": c.get("id", ""), "name": call.name or "",
                          "content": call.result or ""} for c, call in zip(calls, executed.calls)]
            if executed.done:
                break
        return messages
    finally:
        env.close()


def dedupe(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, kept = set(), []
    for r in records:
        key = hashlib.sha256(json.dumps([r["task_id"], r["messages"]], sort_keys=True).encode()).hexdigest()
        if key not in seen:
            seen.add(key)
            kept.append(r)
    return kept


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
