"""Simulated users: who speaks after the agent answers, in multi-turn conversations (tau-bench style).

An env with a `user` (set in its __init__, from the task) gets the user's next turn from it: the simulator
sees the whole conversation so far and returns the user's next message, or None when the user is done.
`ToolEnv.user_turn` awaits it, so an LLM user's request runs while the other rollouts keep generating, and
counts the user's turns against `max_user_turns`. The user's tokens are context, masked like tool results.

- ScriptedUser: fixed replies in order (tests, confirmations such as "Yes, go ahead").
- LLMUser: an LLM role-playing the task's user from its instructions, behind a chat client
  (rlvr/core/endpoint.py): an OpenAI-compatible endpoint, or the model the rollout worker serves beside
  the policy on its own engine (`rollout.local_chat_model`, reached through LocalChat). The conversation is shown with the
  roles swapped (the agent's words as the user's) and without tool traffic; the trajectory's seed goes with
  every request, so rollouts replay (the local engine always honours it); the user ends the conversation
  by writing `stop_phrase`.

This module imports neither torch nor Ray.
"""

from __future__ import annotations

from typing import Any, Protocol

from rlvr.core.contract import Message, Task, spoken_text
from rlvr.core.endpoint import ChatClient


class UserSimulator(Protocol):
    async def reply(self, conversation: list[Message], task: Task) -> str | None:
        """The user's next message after the agent's last answer, or None when the user is done."""
        ...


class ScriptedUser:
    """Replies `lines` in order, one per agent answer, then is done."""

    def __init__(self, lines: list[str]):
        self.lines = list(lines)

    async def reply(self, conversation: list[Message], task: Task) -> str | None:
        return self.lines.pop(0) if self.lines else None


USER_SYSTEM = ("You are a customer talking to a support agent. Follow these instructions, reveal details only "
               "when asked, answer in one or two sentences, and never act as the agent. When your request is "
               "handled, or cannot be, write {stop} and nothing else.\n\nInstructions:\n{instructions}")


class LLMUser:
    """An LLM user simulator behind a chat client (see the module docstring)."""

    def __init__(self, client: ChatClient, model: str, instructions: str, seed: int, temperature: float = 0.0,
                 stop_phrase: str = "###STOP###"):
        self.client, self.model, self.seed, self.temperature = client, model, seed, temperature
        self.system = USER_SYSTEM.format(stop=stop_phrase, instructions=instructions)
        self.stop_phrase = stop_phrase

    async def reply(self, conversation: list[Message], task: Task) -> str | None:
        swapped: list[dict[str, Any]] = [{"role": "system", "content": self.system}]
        for m in conversation:
            text = spoken_text(m.get("content") or "") if m["role"] == "assistant" else (m.get("content") or "")
            if m["role"] in ("user", "assistant") and text:
                swapped.append({"role": "assistant" if m["role"] == "user" else "user", "content": text})
        answer = await self.client.chat({"model": self.model, "messages": swapped, "temperature": self.temperature,
                                         "seed": self.seed}, task.id)
        text = (answer.get("content") or "").strip()
        return None if not text or self.stop_phrase in text else text
