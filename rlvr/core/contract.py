"""The data contract that flows from rollout to learner: Task -> Trajectory -> Group -> Batch.

Every stage reads and writes these types; no untyped dicts travel between stages. The module imports
neither torch nor Ray so that environment and reward plugins can use it in a plain Python shell.
All types serialise to JSON (`model_dump_json` / `model_validate_json`, or `dump_jsonl` / `load_jsonl`)
so trajectories can be dumped, inspected and replayed.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Message = dict[str, Any]  # an OpenAI-style chat message: {"role": ..., "content": ..., ["tool_calls"]: ...}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Task(_Strict):
    """One problem for the agent: what it is asked, with which tools, and how success is checked."""

    id: str
    env: str
    prompt: str | list[Message]
    answer: Any = None  # ground-truth final answer, when the task has one
    expected_state: dict[str, Any] | None = None  # ground-truth final environment state
    gold_calls: list[dict[str, Any]] | None = None  # reference tool calls, when known
    tools: list[dict[str, Any]] | None = None  # JSON tool schemas overriding the env's own
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def needs_no_tool(self) -> bool:
        """Answerable without a tool (metadata `needs_tool: false`, e.g. env.conditions.no_tool_fraction's
        tasks): a call there is unnecessary."""
        return self.metadata.get("needs_tool") is False


class ToolCallError(str, Enum):
    """Why a tool call did not produce a normal result."""

    parse = "parse"  # the text could not be parsed as a call (malformed or truncated)
    unknown_tool = "unknown_tool"  # parsed, but names no tool of the environment
    bad_arguments = "bad_arguments"  # arguments do not match the tool's schema
    raised = "raised"  # the tool raised an exception
    timeout = "timeout"  # the tool ran past its per-call timeout
    transient = "transient"  # the tool failed transiently (a rate limit, an outage): a retry may succeed


# the call itself was wrong (as opposed to a tool that failed on a valid call): the env rejected it
REJECTED_CALLS = (ToolCallError.parse, ToolCallError.unknown_tool, ToolCallError.bad_arguments)

_CALL_MARKUP = re.compile(r"<tool_call>.*?(</tool_call>|$)|<\|python_tag\|>.*$|\[TOOL_CALLS\].*$", re.DOTALL)


def spoken_text(content: str) -> str:
    """What an assistant message says to the user: its text without tool-call markup (hermes `<tool_call>`
    blocks, llama3's `<|python_tag|>` and mistral's `[TOOL_CALLS]` tails; a bare JSON llama3 call is left)."""
    return _CALL_MARKUP.sub("", content or "").strip()


class ToolCall(_Strict):
    """One tool call made by the model, as parsed from its output and executed by the environment."""

    name: str | None = None  # None when the call could not be parsed
    arguments: dict[str, Any] = Field(default_factory=dict)
    raw: str = ""  # the exact text the model produced for this call
    span: tuple[int, int] | None = None  # [start, end) token indices into Trajectory.completion_ids
    turn: int | None = None  # the assistant turn (0-based) that made the call
    result: str | None = None  # what the environment answered (an error message when `error` is set)
    error: ToolCallError | None = None
    latency_s: float | None = None
    anchor: str | None = None  # the env state the call was made from (calls sharing it are comparable)
    scores: dict[str, float] = Field(default_factory=dict)  # named per-call checks from the env and rewards
    credit: float | None = None  # the call's combined score (see docs/credit.md)


FinishReason = Literal["stop", "max_turns", "max_tokens", "error"]


class Trajectory(_Strict):
    """One sampled episode: a single token stream [prompt][turn 1][tool results 1][turn 2]...

    `completion_ids` holds everything after the prompt, sampled tokens and tool-result tokens alike;
    `loss_mask[t]` is 1 exactly where token t was sampled by the policy; `logprobs[t]` is the behaviour
    log-prob of that token under the distribution actually sampled (after temperature), 0.0 where
    the mask is 0.
    """

    id: str
    task_id: str
    group_id: str
    policy_version: int = 0
    seed: int = 0  # the trajectory's own seed (sampling; the env's too unless env_seed says otherwise), for replay
    env_seed: int | None = None  # the seed its env was built with, when not `seed` (rollout.env_randomness=group)
    prompt_ids: list[int]
    completion_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    tool_calls: list[ToolCall] = Field(default_factory=list)
    messages: list[Message] = Field(default_factory=list)  # readable transcript, for logs and replay
    final_answer: str | None = None
    final_state: dict[str, Any] | None = None
    turns: int = 1
    finish_reason: FinishReason = "stop"
    reward: float | None = None  # None until scored
    reward_components: dict[str, float] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _aligned(self) -> Trajectory:
        n = len(self.completion_ids)
        if len(self.loss_mask) != n or len(self.logprobs) != n:
            raise ValueError(
                f"trajectory {self.id}: completion_ids ({n}), loss_mask ({len(self.loss_mask)}) and "
                f"logprobs ({len(self.logprobs)}) must have the same length"
            )
        if any(m not in (0, 1) for m in self.loss_mask):
            raise ValueError(f"trajectory {self.id}: loss_mask must hold only 0 and 1")
        if not self.prompt_ids:
            raise ValueError(f"trajectory {self.id}: prompt_ids is empty")
        for i, call in enumerate(self.tool_calls):
            if call.span is not None and not (0 <= call.span[0] <= call.span[1] <= n):
                raise ValueError(f"trajectory {self.id}: tool call {i} span {call.span} is outside [0, {n}]")
        return self

    @property
    def num_sampled_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids


class Group(_Strict):
    """The G trajectories sampled for one task; group statistics (advantages) are computed over them."""

    id: str
    task: Task
    trajectories: list[Trajectory]

    @model_validator(mode="after")
    def _consistent(self) -> Group:
        for t in self.trajectories:
            if t.group_id != self.id or t.task_id != self.task.id:
                raise ValueError(
                    f"group {self.id}: trajectory {t.id} has group_id={t.group_id!r}, task_id={t.task_id!r}"
                )
        return self

    @property
    def rewards(self) -> list[float]:
        missing = [t.id for t in self.trajectories if t.reward is None]
        if missing:
            raise ValueError(f"group {self.id}: trajectories {missing} have no reward (not scored)")
        return [t.reward for t in self.trajectories]  # type: ignore[misc]


class Batch(_Strict):
    """What the learner consumes: trajectories with one advantage per completion token.

    `advantages[i][t]` is the advantage of token t of trajectory i (the outcome advantage plus any
    per-call credit on that call's tokens); the learner only uses it where `loss_mask` is 1.
    """

    trajectories: list[Trajectory]
    advantages: list[list[float]]

    @model_validator(mode="after")
    def _aligned(self) -> Batch:
        if len(self.advantages) != len(self.trajectories):
            raise ValueError(
                f"batch: {len(self.trajectories)} trajectories but {len(self.advantages)} advantage rows"
            )
        for t, a in zip(self.trajectories, self.advantages):
            if len(a) != len(t.completion_ids):
                raise ValueError(
                    f"batch: trajectory {t.id} has {len(t.completion_ids)} completion tokens but "
                    f"{len(a)} advantages"
                )
        return self

    @property
    def num_sampled_tokens(self) -> int:
        return sum(t.num_sampled_tokens for t in self.trajectories)

    @property
    def num_tokens(self) -> int:
        return sum(len(t.prompt_ids) + len(t.completion_ids) for t in self.trajectories)


Model = TypeVar("Model", bound=BaseModel)


def dump_jsonl(path: str | Path, items: Iterable[BaseModel]) -> None:
    """Write one JSON object per line."""
    with open(path, "w") as f:
        for item in items:
            f.write(item.model_dump_json() + "\n")


def load_jsonl(path: str | Path, cls: type[Model], defaults: dict[str, Any] | None = None) -> list[Model]:
    """Read a JSON-lines file of `cls` objects (`defaults` fill fields a row leaves out); a broken row fails
    with its file and line number."""
    items = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                items.append(cls.model_validate({**(defaults or {}), **row} if isinstance(row, dict) else row))
            except (json.JSONDecodeError, ValidationError) as e:
                first = str(e).splitlines()[0] if isinstance(e, json.JSONDecodeError) else first_error(e)
                raise ValueError(f"{path}:{lineno}: not a valid {cls.__name__}: {first}") from None
    return items


def first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]
