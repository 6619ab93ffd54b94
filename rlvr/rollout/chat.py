"""Tool-call formats: parse what the model wrote into ToolCalls, and render tools into the prompt.

Parsing never raises on model output: malformed, truncated or unknown-tool calls become ToolCalls with
an error kind, so the environment can answer them with an error message the model can read.

Formats:
- `hermes` (Qwen2.5, Hermes, and rlvr's fallback): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
  one block per call, any number per turn, text around the blocks is the turn's content.
- `llama3`: the turn is one or more JSON objects `{"name": ..., "parameters": {...}}` (optionally after
  `<|python_tag|>`), separated by `;` or whitespace; a turn that does not start with `{` is plain content.
- `mistral`: content, then `[TOOL_CALLS]` followed by a JSON list of calls, or by `name[ARGS]{...}` segments.

Templates without tool support (SmolLM2's) get the tools through a system prompt in the hermes format and
tool results as user turns wrapped in `<tool_response>` tags (`render_tools_in_system_prompt`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from rlvr.core.contract import Message, ToolCall, ToolCallError

FORMATS = ("hermes", "llama3", "mistral")


def parse_tool_calls(text: str, format: str = "hermes", tools: set[str] | None = None) -> tuple[str, list[ToolCall]]:
    """Split a model turn into (content, tool calls).

    `tools`, when given, is the set of valid tool names: other names get error `unknown_tool`.
    Never raises on model output; an unknown `format` is a programming error and raises ValueError.
    """
    if format not in _PARSERS:
        raise ValueError(f"unknown tool-call format {format!r}; choose one of {', '.join(FORMATS)}")
    content, calls = _PARSERS[format](text)
    if tools is not None:
        for call in calls:
            if call.error is None and call.name not in tools:
                call.error = ToolCallError.unknown_tool
                call.result = f"unknown tool {call.name!r}; available tools: {', '.join(sorted(tools))}"
    return content, calls


def _call_from_object(obj: Any, raw: str, args_key: str = "arguments") -> ToolCall:
    """A parsed JSON value -> ToolCall, or a parse error saying what is wrong with it."""
    if not isinstance(obj, dict):
        return _parse_error(raw, f"a tool call must be a JSON object, got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return _parse_error(raw, 'a tool call needs a "name" string')
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):  # some models emit the arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return _parse_error(raw, f"the arguments of {name} are not valid JSON: {e.msg}", name=name)
    if not isinstance(args, dict):
        return _parse_error(raw, f"the arguments of {name} must be a JSON object", name=name)
    return ToolCall(name=name, arguments=args, raw=raw)


def _parse_error(raw: str, why: str, name: str | None = None) -> ToolCall:
    return ToolCall(name=name, raw=raw, error=ToolCallError.parse, result=f"could not parse the tool call: {why}")


def _loads(raw: str, args_key: str = "arguments") -> ToolCall:
    try:
        return _call_from_object(json.loads(raw), raw, args_key)
    except json.JSONDecodeError as e:
        return _parse_error(raw, f"invalid JSON ({e.msg} at position {e.pos})")


_HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def _parse_hermes(text: str) -> tuple[str, list[ToolCall]]:
    calls, pieces, end = [], [], 0
    for match in _HERMES_BLOCK.finditer(text):
        pieces.append(text[end : match.start()])
        end = match.end()
        body = match.group(1).strip()
        if not match.group(0).endswith("</tool_call>"):
            calls.append(_parse_error(match.group(0), "truncated: no closing </tool_call>"))
        else:
            calls.append(_loads(body))
            calls[-1].raw = match.group(0)
    pieces.append(text[end:])
    return "".join(pieces).strip(), calls


def _parse_llama3(text: str) -> tuple[str, list[ToolCall]]:
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return text.strip(), []
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while pos < len(body):
        try:
            obj, stop = decoder.raw_decode(body, pos)
        except json.JSONDecodeError as e:
            calls.append(_parse_error(body[pos:], f"invalid JSON ({e.msg})"))
            break
        calls.append(_call_from_object(obj, body[pos:stop], args_key="parameters"))
        pos = stop
        while pos < len(body) and body[pos] in "; \n\t":
            pos += 1
    return "", calls


def _parse_mistral(text: str) -> tuple[str, list[ToolCall]]:
    content, marker, rest = text.partition("[TOOL_CALLS]")
    if not marker:
        return text.strip(), []
    rest = rest.strip()
    if rest.startswith("["):  # [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
        try:
            objects = json.loads(rest)
        except json.JSONDecodeError as e:
            return content.strip(), [_parse_error(rest, f"invalid JSON ({e.msg} at position {e.pos})")]
        if not isinstance(objects, list):
            objects = [objects]
        return content.strip(), [_call_from_object(o, json.dumps(o)) for o in objects]
    calls = []  # newer templates: name[ARGS]{...}, repeated, each optionally after another [TOOL_CALLS]
    for segment in filter(str.strip, rest.split("[TOOL_CALLS]")):
        name, args_marker, args = segment.partition("[ARGS]")
        if not args_marker:
            calls.append(_parse_error(segment, "expected name[ARGS]{...}"))
            continue
        try:
            parsed = json.loads(args.strip())
        except json.JSONDecodeError as e:
            calls.append(_parse_error(segment, f"invalid JSON arguments ({e.msg})", name=name.strip()))
            continue
        calls.append(_call_from_object({"name": name.strip(), "arguments": parsed}, segment))
    return content.strip(), calls


_PARSERS = {"hermes": _parse_hermes, "llama3": _parse_llama3, "mistral": _parse_mistral}


def write_tool_calls(content: str, calls: list[tuple[str, dict[str, Any]]], format: str = "hermes") -> str:
    """The turn a model of `format` writes for `content` and (name, arguments) calls: the inverse of
    parse_tool_calls, used to turn OpenAI-style `tool_calls` into training text."""
    content = content.strip()
    if not calls:
        return content
    if format == "hermes":
        blocks = "\n".join(f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls)
        return f"{content}\n{blocks}" if content else blocks
    if format == "llama3":  # llama3 turns that call tools hold only the calls
        return "; ".join(json.dumps({"name": n, "parameters": a}) for n, a in calls)
    if format == "mistral":
        return f"{content}[TOOL_CALLS]{json.dumps([{'name': n, 'arguments': a} for n, a in calls])}"
    raise ValueError(f"unknown tool-call format {format!r}; choose one of {', '.join(FORMATS)}")


def rollout_messages(messages: list[Message], format: str) -> list[Message]:
    """OpenAI-style messages as a rollout holds them: assistant tool calls as the text the model writes."""
    out: list[Message] = []
    for m in messages:
        if m["role"] == "assistant":
            calls = [(c["function"]["name"], tool_arguments(c["function"]["arguments"])) for c in m.get("tool_calls") or []]
            out.append({"role": "assistant", "content": write_tool_calls(m.get("content") or "", calls, format)})
        elif m["role"] == "tool":
            out.append({"role": "tool", "name": m.get("name", ""), "content": m["content"]})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def tool_arguments(raw: Any) -> dict[str, Any]:
    """An OpenAI tool call's arguments: a JSON string (the API's form) or already a dict."""
    return json.loads(raw) if isinstance(raw, str) else raw


# --------------------------------------------------------------------------------------------------
# Rendering tools into the prompt

FALLBACK_SYSTEM = """You can call tools. Their JSON schemas:
<tools>
{tools}
</tools>
To call a tool, write
<tool_call>
{{"name": "<tool name>", "arguments": {{<arguments as JSON>}}}}
</tool_call>
Each result comes back inside <tool_response></tool_response>. When you know the answer, reply without a tool call."""


def template_supports_tools(tokenizer) -> bool:
    """True when the chat template renders the tool schemas it is given (Qwen2.5 does, SmolLM2 does not)."""
    probe = [{"type": "function", "function": {"name": "rlvr_probe_tool", "description": "probe",
                                                "parameters": {"type": "object", "properties": {}}}}]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=probe, tokenize=False)
    return "rlvr_probe_tool" in text


def detect_tool_format(tokenizer) -> str:
    """The tool-call format the chat template teaches (hermes for templates without tool support)."""
    if not template_supports_tools(tokenizer):
        return "hermes"
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else str(tokenizer.chat_template)
    for marker, format in (("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"), ("<|python_tag|>", "llama3"),
                           ('"parameters"', "llama3")):
        if marker in template:
            return format
    raise ValueError("cannot tell the tool-call format from the chat template; set rollout.tool_format")


def render_tools_in_system_prompt(messages: list[Message], tools: list[dict[str, Any]]) -> list[Message]:
    """The hermes fallback for templates without tool support: tool schemas go into the system message,
    assistant tool calls stay as the text the model wrote, and tool results become user turns."""
    system = FALLBACK_SYSTEM.format(tools="\n".join(json.dumps(t) for t in tools))
    out: list[Message] = []
    for i, m in enumerate(messages):
        if i == 0 and m["role"] == "system":
            system = m["content"] + "\n\n" + system
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return [{"role": "system", "content": system}, *out]


class ChatRenderer:
    """Turns messages into token ids through the tokenizer's chat template, token-in/token-out.

    `prompt_ids` renders the opening messages once. After that a trajectory only ever grows by the ids
    the engine sampled and by `suffix_ids`: the template's rendering of the tool results, taken as
    the difference between rendering a dummy conversation with and without them. The whole transcript
    is never re-tokenised (decode -> encode is not a bijection); `render_ids` exists to measure drift.
    """

    def __init__(self, tokenizer, format: str = "auto"):
        self.native_tools = template_supports_tools(tokenizer)
        format = detect_tool_format(tokenizer) if format == "auto" else format
        if format not in FORMATS:
            raise ValueError(f"unknown tool-call format {format!r}; choose one of {', '.join(FORMATS)}")
        self.tokenizer = tokenizer
        self.format = format
        if not self.native_tools and format != "hermes":
            raise ValueError(f"the chat template has no tool support; its fallback format is hermes, not {format}")
        self.turn_end_id = _turn_end_id(tokenizer)
        # generation stops at the template's end of turn, or at EOS
        self.turn_end_ids = {self.turn_end_id} | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        self._prompt_cache: dict[str, list[int]] = {}

    def _messages(self, messages: list[Message], tools: list[dict[str, Any]]) -> tuple[list[Message], Any]:
        if self.native_tools or not tools:  # no tools (general chat): the template's own rendering
            return messages, tools or None
        return render_tools_in_system_prompt(messages, tools), None

    def render_ids(self, messages: list[Message], tools: list[dict[str, Any]], *, generation_prompt: bool) -> list[int]:
        msgs, native = self._messages(messages, tools)
        text = self.tokenizer.apply_chat_template(msgs, tools=native, tokenize=False,
                                                  add_generation_prompt=generation_prompt)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, messages: list[Message], tools: list[dict[str, Any]]) -> list[int]:
        """The opening prompt's ids; the G trajectories of a task share it, so it is rendered once."""
        key = json.dumps([messages, tools], sort_keys=True)
        if key not in self._prompt_cache:
            if len(self._prompt_cache) >= 4096:
                self._prompt_cache.clear()
            self._prompt_cache[key] = self.render_ids(messages, tools, generation_prompt=True)
        return list(self._prompt_cache[key])

    def suffix_ids(self, tool_messages: list[Message], tools: list[dict[str, Any]]) -> list[int]:
        """The ids that follow an assistant turn's end token when `tool_messages` answer it, up to and
        including the next assistant header."""
        dummy = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        before = self.render_ids(dummy, tools, generation_prompt=False)
        after = self.render_ids(dummy + tool_messages, tools, generation_prompt=True)
        # the model stops at the turn-end token; what the template puts after it ("\n") belongs to the suffix
        ends = [i for i, t in enumerate(before) if t in self.turn_end_ids]
        if not ends:
            raise ValueError("the chat template does not end assistant turns with an end-of-turn token")
        cut = ends[-1] + 1
        if after[:cut] != before[:cut]:
            raise ValueError("the chat template rewrites earlier turns when tool results are appended; "
                             "token-in/token-out rollouts need an append-only template")
        return after[cut:]

    def decode(self, ids: list[int]) -> str:
        """The text of sampled ids, without the turn-end token."""
        if ids and ids[-1] in self.turn_end_ids:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def _turn_end_id(tokenizer) -> int:
    """The token the template writes after an assistant message."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                                         tokenize=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    special = set(tokenizer.all_special_ids)
    tail = [t for t in ids[ids.index(tokenizer.encode("y", add_special_tokens=False)[-1]) + 1 :] if t in special]
    if not tail:
        raise ValueError("cannot find the end-of-turn token of the chat template")
    return tail[0]
