"""An LLM judge as a reward: assertions about a trajectory, each checked by a model behind an
OpenAI-compatible endpoint, or by the local chat model the rollout worker serves (`url: local` with
`rollout.local_chat_model`; rlvr/core/endpoint.py) (tau-bench's natural-language assertions, rubric grading).

    rewards:
      functions:
        - name: llm_judge
          options: {url: http://127.0.0.1:8000/v1, model: judge-7b}       # assertions from task.metadata
        - name: llm_judge
          options: {url: ..., model: ..., rubric: "The agent confirmed before cancelling."}

The assertions are the task's `metadata["assertions"]` (a list of strings; an empty list scores 1.0), or
the one `rubric` option; a task with neither is an error.
Each goes to the judge in its own request, all of them concurrently (async, so rollouts keep generating),
with the conversation as the agent and user saw it (tool calls and results included); the judge answers
YES or NO on its first line. The reward is the share of YES, with components `assertions` and `passed` and
per-assertion verdicts `a0`, `a1`, ... (1/0). A verdict that is neither, or an endpoint that fails after its
retries, raises: the scorer reports it under `rewards.on_error`, never as a 0. Every prompt and verdict is
logged (logger `rlvr.rewards.judge`, INFO). This module imports neither torch nor Ray.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re

from rlvr.core.contract import Task, Trajectory
from rlvr.core.endpoint import ChatClient, chat_client
from rlvr.rewards.base import Score

log = logging.getLogger(__name__)

JUDGE_SYSTEM = ("You grade an AI agent's conversation with a user. You get the conversation and one assertion. "
                "Answer YES if the assertion holds for the conversation, NO if it does not, on the first line, "
                "then at most one sentence of reason.")


@functools.cache
def _client(url: str, api_key: str | None) -> ChatClient:
    return chat_client(url, api_key=api_key)


def transcript(trajectory: Trajectory) -> str:
    """The conversation as text, one `ROLE: content` block per message (the system prompt left out)."""
    return "\n\n".join(f"{m['role'].upper()}: {m.get('content') or ''}" for m in trajectory.messages
                       if m["role"] != "system")


async def llm_judge(trajectory: Trajectory, task: Task, *, url: str, model: str, rubric: str | None = None,
                    api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.0) -> Score:
    assertions = [rubric] if rubric else task.metadata.get("assertions")
    if not isinstance(assertions, list) or not all(isinstance(a, str) and a for a in assertions):
        raise ValueError(f"llm_judge: task {task.id} has no metadata['assertions'] list of strings and no rubric "
                         "option to judge")
    if not assertions:  # nothing to assert holds (tau2 scores a task without assertions so)
        return Score(total=1.0, components={"assertions": 0.0, "passed": 0.0})
    client = _client(url, os.environ.get(api_key_env) or None)
    conversation = transcript(trajectory)

    async def verdict(number: int, assertion: str) -> float:
        prompt = f"Conversation:\n{conversation}\n\nAssertion: {assertion}"
        answer = await client.chat({"model": model, "temperature": temperature, "seed": 0, "messages": [
            {"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]}, task.id)
        said = re.match(r"\W*(yes|no)\b", answer.get("content") or "", re.IGNORECASE)
        word = said.group(1).upper() if said else ""
        log.info("llm_judge task=%s trajectory=%s assertion=%r verdict=%r", task.id, trajectory.id, assertion,
                 answer.get("content"))
        if word not in ("YES", "NO"):
            raise ValueError(f"llm_judge: the judge's answer to assertion {number} ({assertion!r:.80}) is neither "
                             f"YES nor NO: {answer.get('content')!r:.120}")
        return float(word == "YES")

    verdicts = await asyncio.gather(*(verdict(i, a) for i, a in enumerate(assertions)))
    return Score(total=sum(verdicts) / len(verdicts),
                 components={"assertions": float(len(verdicts)), "passed": float(sum(verdicts)),
                             **{f"a{i}": v for i, v in enumerate(verdicts)}})
