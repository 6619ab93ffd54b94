"""Tool-call formats: parse what the model wrote into ToolCalls, and render tools into the prompt.

Parsing never raises on model output: malformed, truncated or unknown-tool calls become ToolCalls with
an error kind, so the environment can answer them with an error message the model can read.

Formats:
- `hermes` (Qwen2.5, Hermes, and rlvr's fallback): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
  one block per call, any number per turn, text around the blocks is the turn's content.
- `llama3`: one or more JSON objects `{"name": ..., "parameters": {...}}` separated by `;` or whitespace,
  or a Llama 4 pythonic list `[f(a=1, b='x'), g()]`, optionally after `<|python_tag|>` or inside
  `<|python_start|>...<|python_end|>` (text before the marker is content); without a marker, a turn that
  does not parse as calls (a plain answer, even a JSON one) is content.
- `mistral`: content, then `[TOOL_CALLS]` followed by a JSON list of calls, or by `name[ARGS]{...}` segments
  (`name[CALL_ID]id[ARGS]{...}` in the newest templates).

Templates without tool support (SmolLM2's) get the tools through a system prompt in the hermes format and
tool results as user turns wrapped in `<tool_response>` tags (`render_tools_in_system_prompt`).
"""

from __future__ import annotations

import json
from typing import Any

from rlvr.core.endpoint import tool_arguments
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


_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_JSON = json.JSONDecoder()


def _skip_space(text: str, pos: int, also: str = "") -> int:
    while pos < len(text) and (text[pos].isspace() or text[pos] in also):
        pos += 1
    return pos


def _parse_hermes(text: str) -> tuple[str, list[ToolCall]]:
    """Each `<tool_call>` block up to its `</tool_call>`. The block's JSON is decoded first, so a closing
    marker inside a JSON string (an argument that mentions `</tool_call>`) does not end the call."""
    calls, pieces, end = [], [], 0
    while (begin := text.find(_HERMES_OPEN, end)) >= 0:
        pieces.append(text[end:begin])
        body_start = _skip_space(text, begin + len(_HERMES_OPEN))
        close = -1
        try:
            _, stop = _JSON.raw_decode(text, body_start)
            after = _skip_space(text, stop)
            if text.startswith(_HERMES_CLOSE, after):
                close = after
        except json.JSONDecodeError:
            pass
        if close < 0:  # not one JSON value followed by the marker: the block ends at the first marker
            close = text.find(_HERMES_CLOSE, body_start)
        if close < 0:
            raw = text[begin:]
            calls.append(_parse_error(raw, "truncated: no closing </tool_call>"))
            end = len(text)
            break
        end = close + len(_HERMES_CLOSE)
        calls.append(_loads(text[begin + len(_HERMES_OPEN) : close].strip()))
        calls[-1].raw = text[begin:end]
    pieces.append(text[end:])
    return "".join(pieces).strip(), calls


def _looks_like_call(obj: Any) -> bool:
    """A JSON value a llama3 model wrote as a call: an object with a name and its arguments (a plain
    answer object such as {"answer": 42} or {"name": "Ada", "age": 36} is content)."""
    return isinstance(obj, dict) and isinstance(obj.get("name"), str) and ("parameters" in obj or "arguments" in obj)


def _parse_llama3(text: str) -> tuple[str, list[ToolCall]]:
    """JSON calls ({"name": ..., "parameters": {...}}, separated by ; or whitespace) or Llama 4 pythonic
    call lists ([f(a=1, b='x'), g()]), optionally after `<|python_tag|>` or inside
    `<|python_start|>...<|python_end|>`; text before a marker is the turn's content. Without a marker, a
    turn is calls only when it parses as calls; anything else (a plain answer, even one in JSON) is content."""
    content, tag, body = text.partition("<|python_tag|>")
    if not tag:
        content, tag, body = text.partition("<|python_start|>")
        body = body.split("<|python_end|>")[0]
    if not tag:
        content, body = "", text
    content, body = content.strip(), body.strip()
    if body.startswith("["):
        calls = _pythonic_calls(body)
        if calls is not None:
            return content, calls
        if not tag:
            return text.strip(), []
        return content, [_parse_error(body, "expected a list of calls such as [f(a=1), g()]")]
    if not body.startswith("{"):
        if not tag:
            return text.strip(), []
        return content, [_parse_error(body, 'expected {"name": ..., "parameters": {...}}')] if body else []
    calls, pos = [], 0
    while pos < len(body):
        try:
            obj, stop = _JSON.raw_decode(body, pos)
        except json.JSONDecodeError as e:
            if not tag and not calls and '"name"' not in body:
                return text.strip(), []  # not JSON and nothing call-like: content
            calls.append(_parse_error(body[pos:], f"invalid JSON ({e.msg})"))
            break
        if not tag and not calls and not _looks_like_call(obj):
            return text.strip(), []  # a JSON answer, not a call
        calls.append(_call_from_object(obj, body[pos:stop], args_key="parameters"))
        pos = _skip_space(body, stop, also=";")
    return content, calls


def _pythonic_calls(body: str) -> list[ToolCall] | None:
    """`[f(a=1, b='x'), mod.g()]` -> ToolCalls (raw: each call's own text), or None when `body` is not a
    list of calls with keyword arguments. An argument that is not a literal is a parse error of its call."""
    import ast

    try:
        tree = ast.parse(body, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.List) or not tree.elts or not all(
            isinstance(e, ast.Call) and isinstance(e.func, (ast.Name, ast.Attribute)) for e in tree.elts):
        return None
    calls = []
    for node in tree.elts:
        raw, name = ast.get_source_segment(body, node) or "", ast.unparse(node.func)
        if node.args:
            calls.append(_parse_error(raw, f"{name}: pass arguments by name (a=1), not by position", name=name))
            continue
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
        except ValueError:
            calls.append(_parse_error(raw, f"the arguments of {name} must be literals", name=name))
            continue
        calls.append(ToolCall(name=name, arguments=args, raw=raw))
    return calls


def _json_list_items(text: str) -> list[tuple[Any, str]]:
    """A JSON list written by the model -> (value, the model's own text of it) per item; raises
    json.JSONDecodeError like json.loads."""
    pos = _skip_space(text, 1)  # after "["
    items = []
    if text.startswith("]", pos):
        return items
    while True:
        obj, stop = _JSON.raw_decode(text, pos)
        items.append((obj, text[pos:stop]))
        pos = _skip_space(text, stop)
        if text.startswith("]", pos):
            return items
        if not text.startswith(",", pos):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        pos = _skip_space(text, pos + 1)


def _parse_mistral(text: str) -> tuple[str, list[ToolCall]]:
    """Content, then `[TOOL_CALLS]` and a JSON list of calls, or `name[ARGS]{...}` segments (newer
    templates; `name[CALL_ID]id[ARGS]{...}` in the newest), each optionally after another `[TOOL_CALLS]`.
    Every call's raw is the model's own text, so its tokens can be found for credit."""
    content, marker, rest = text.partition("[TOOL_CALLS]")
    if not marker:
        return text.strip(), []
    rest = rest.strip()
    if rest.startswith("["):  # [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
        try:
            items = _json_list_items(rest)
        except json.JSONDecodeError as e:
            return content.strip(), [_parse_error(rest, f"invalid JSON ({e.msg} at position {e.pos})")]
        return content.strip(), [_call_from_object(obj, raw) for obj, raw in items]
    calls, pos = [], 0
    while pos < len(rest):
        args_at = rest.find("[ARGS]", pos)
        if args_at < 0:
            calls.append(_parse_error(rest[pos:], "expected name[ARGS]{...}"))
            break
        name = rest[pos:args_at].partition("[CALL_ID]")[0].strip()
        args_start = _skip_space(rest, args_at + len("[ARGS]"))
        try:
            parsed, stop = _JSON.raw_decode(rest, args_start)
        except json.JSONDecodeError as e:
            calls.append(_parse_error(rest[pos:], f"invalid JSON arguments ({e.msg})", name=name))
            break
        calls.append(_call_from_object({"name": name, "arguments": parsed}, rest[pos:stop]))
        pos = _skip_space(rest, stop)
        if rest.startswith("[TOOL_CALLS]", pos):
            pos = _skip_space(rest, pos + len("[TOOL_CALLS]"))
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
                           ("<|python_start|>", "llama3"), ('"parameters"', "llama3")):
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


def check_prompts_fit(cfg, env_cls, tasks: list, what: str) -> None:
    """Raise ConfigError naming the first task whose opening prompt, tool schemas included, leaves no room
    for an answer in the model's context (its max_position_embeddings): before any model loads, rather
    than a truncation warning in the middle of a run."""
    from transformers import AutoConfig

    from rlvr.core.config import ConfigError
    from rlvr.training.models import load_tokenizer, resolve_model

    limit = getattr(AutoConfig.from_pretrained(resolve_model(cfg.model.name)), "max_position_embeddings", None)
    if not limit:
        return
    renderer = ChatRenderer(load_tokenizer(cfg.model.name), cfg.rollout.tool_format)
    for task in tasks:
        env = env_cls(task)
        try:
            messages, tools = env.reset()
        finally:
            env.close()
        length = len(renderer.prompt_ids(messages, tools))
        if length >= limit:
            raise ConfigError(f"{what}: task {task.id}'s opening prompt with its {len(tools)} tool schemas is "
                              f"{length} tokens; {cfg.model.name} holds {limit} positions, so nothing is left "
                              "to answer in (shorten the prompt or the tools, or use a longer-context model)")
