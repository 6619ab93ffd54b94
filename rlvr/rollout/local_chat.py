"""The local chat model: served by the rollout worker on its own engine to simulated users and judges.

`rollout.local_chat_model` names a frozen model; the worker loads it, builds an engine for it on its own
event loop and publishes an `EngineChat` through `rlvr.core.endpoint.serve_local_chat`, where LocalChat
finds it (an LLMUser of envs/users.py, tau2's `env.options.user_url: local`, `llm_judge` with `url: local`).
Its requests batch with each other on that engine while the policy's engine keeps decoding: both step on
the worker's loop, between awaits.
"""

from __future__ import annotations

from typing import Any

from rlvr.core.protocols import SamplingParams

DEFAULT_MAX_TOKENS = 128  # a user's turn or a verdict is a sentence or two; requests may ask for more


class EngineChat:
    """A chat client (rlvr/core/endpoint.py ChatClient) over a local engine and its tokenizer's chat template."""

    def __init__(self, engine, tokenizer):
        self.engine, self.tokenizer = engine, tokenizer

    async def chat(self, payload: dict[str, Any], task_id: str) -> dict[str, Any]:
        try:
            ids = self.tokenizer.apply_chat_template(payload["messages"], add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            params = SamplingParams(max_tokens=int(payload.get("max_tokens") or DEFAULT_MAX_TOKENS),
                                    temperature=float(payload.get("temperature", 0.0)),
                                    seed=int(payload.get("seed") or 0))
            completion = await self.engine.generate(ids, params)
        except Exception as e:
            raise RuntimeError(f"task {task_id!r}: the local chat model failed: {type(e).__name__}: {e}") from e
        return {"role": "assistant", "content": self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)}

