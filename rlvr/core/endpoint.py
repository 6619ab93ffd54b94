"""Chat clients: OpenAI-compatible endpoints (teachers in `rlvr synth`, LLM users in envs, LLM judges) and
the local chat model a rollout worker serves itself.

EndpointClient: a bearer token when given, retries with exponential backoff (honouring Retry-After) on
408/429/5xx answers and refused connections, and an error naming the task on a malformed answer. The request
runs in a thread, so awaiting it never blocks the rollouts sharing the event loop.

LocalChat: the frozen model named by `rollout.local_chat_model`, which each rollout worker loads onto its
own engine beside the policy's (rlvr/rollout/local_chat.py) and publishes here; simulated users and judges
configured with the url "local" reach it. Its requests batch with each other and interleave with the
policy's decoding on the worker's event loop, and honour the seed they carry.

This module imports neither torch nor Ray.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol


# requests wait on the network, not the CPU: their own pool, so a judge's hundreds of concurrent verdicts do
# not queue behind asyncio's default pool of min(32, cores + 4) threads (or block tools and rewards)
_REQUEST_THREADS = ThreadPoolExecutor(max_workers=256, thread_name_prefix="rlvr-endpoint")


def tool_arguments(raw: Any) -> Any:
    """An OpenAI tool call's arguments: a JSON string (the API's form) or already a dict."""
    return json.loads(raw) if isinstance(raw, str) else raw


RETRY_STATUS = (408, 429, 500, 502, 503, 504)


class EndpointError(RuntimeError):
    """The endpoint refused a request for good (after its retries, or a 4xx it will not retry) or answered
    something that is not a chat completion; the message names the endpoint and the task."""


class EndpointClient:
    """POSTs chat completions to an OpenAI-compatible server: a bearer token when given, and retries with
    exponential backoff (honouring Retry-After) on 408/429/5xx answers and refused connections."""

    def __init__(self, url: str, api_key: str | None = None, retries: int = 4, backoff_s: float = 0.5,
                 timeout_s: float = 300.0):
        self.url, self.api_key, self.retries = url.rstrip("/") + "/chat/completions", api_key, retries
        self.backoff_s, self.timeout_s = backoff_s, timeout_s

    async def chat(self, body: dict[str, Any], task_id: str) -> dict[str, Any]:
        """The reply's message (content, tool_calls) for the conversation of task `task_id`."""
        for attempt in range(self.retries + 1):
            try:
                answer = await asyncio.get_running_loop().run_in_executor(_REQUEST_THREADS, self._post, body)
                break
            except _Refused as e:
                raise EndpointError(f"endpoint {self.url}, task {task_id}: {e}") from None
            except _Retry as e:
                if attempt == self.retries:
                    raise EndpointError(f"endpoint {self.url}, task {task_id}: {e.reason}, still after "
                                        f"{self.retries + 1} attempts") from None
                await asyncio.sleep(e.retry_after_s if e.retry_after_s is not None else self.backoff_s * 2 ** attempt)
        try:
            message = answer["choices"][0]["message"]
            for call in message.get("tool_calls") or []:
                if not isinstance(call["function"]["name"], str):
                    raise TypeError("a tool call without a name")
                if not isinstance(tool_arguments(call["function"]["arguments"]), dict):
                    raise TypeError("tool call arguments that are not a JSON object")
        except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
            raise EndpointError(f"endpoint {self.url}, task {task_id}: a malformed chat completion "
                                f"({type(e).__name__}: {e}): {json.dumps(answer)[:300]}") from None
        return message

    def _post(self, body: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read()
        except urllib.error.HTTPError as e:
            status = f"HTTP {e.code} {e.read()[:300].decode(errors='replace')}".strip()
            if e.code in RETRY_STATUS:
                after = e.headers.get("Retry-After")
                raise _Retry(status, float(after) if after and after.isdigit() else None) from None
            raise _Refused(status) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise _Retry(f"{type(e).__name__}: {getattr(e, 'reason', e)}", None) from None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return {"not JSON": text[:300].decode(errors="replace")}


class _Refused(Exception):
    """An answer not worth retrying (a 4xx other than 408/429)."""


class _Retry(Exception):
    def __init__(self, reason: str, retry_after_s: float | None):
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, retry_after_s


class ChatClient(Protocol):
    async def chat(self, payload: dict[str, Any], task_id: str) -> dict[str, Any]:
        """The assistant message answering an OpenAI chat-completions `payload`; errors name `task_id`."""
        ...


LOCAL = "local"  # the url that names the local chat model
_LOCAL_CHAT: list[ChatClient] = []  # published by this process's rollout worker, if it serves one


def serve_local_chat(client: ChatClient | None) -> None:
    """Set (None: clear) the chat client that LocalChat forwards to: the rollout worker's local model."""
    _LOCAL_CHAT[:] = [client] if client is not None else []


class LocalChat:
    """The local chat model, looked up at each request: envs and rewards are also built where no worker
    runs (task sources replaying gold calls, `rlvr envs check`); only a request needs the model."""

    async def chat(self, payload: dict[str, Any], task_id: str) -> dict[str, Any]:
        if not _LOCAL_CHAT:
            raise RuntimeError(f"task {task_id!r}: a simulated user or judge asks for the local chat model, but this "
                               "process serves none: set rollout.local_chat_model to the model the rollout worker "
                               "should serve")
        return await _LOCAL_CHAT[0].chat(payload, task_id)


def chat_client(url: str, api_key: str | None = None) -> ChatClient:
    """LocalChat for the url "local", else an EndpointClient."""
    return LocalChat() if url == LOCAL else EndpointClient(url, api_key=api_key)
