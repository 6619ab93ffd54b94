"""Tool-call parsing cases from other projects' parser tests: JSON that is not a call, markers inside JSON
strings, text before <|python_tag|>, Llama 4 pythonic lists, Mistral [CALL_ID], and spans for Mistral lists."""

import pytest

from rlvr import parse_tool_calls
from rlvr.core.contract import ToolCallError


@pytest.mark.parametrize("text", ['{"answer": 42}', '{"name": "Ada", "age": 36}', '[1, 2, 3]', "{not json at all}",
                                  "[see the table below]"])
def test_json_that_is_not_a_call_stays_content(text):
    assert parse_tool_calls(text, "llama3") == (text, [])


def test_a_truncated_call_is_still_a_parse_error():
    _, calls = parse_tool_calls('{"name": "calculate", "parameters": {"expression": ', "llama3")
    assert calls[0].error == ToolCallError.parse


def test_a_marker_inside_a_json_string_does_not_end_the_call():
    text = ('<tool_call>{"name": "write", "arguments": {"text": "close with </tool_call> and open <tool_call>"}}'
            '</tool_call> done')
    content, [call] = parse_tool_calls(text, "hermes")
    assert call.error is None and call.arguments == {"text": "close with </tool_call> and open <tool_call>"}
    assert content == "done" and call.raw == text[: -len(" done")]
    _, calls = parse_tool_calls('[TOOL_CALLS]write[ARGS]{"text": "a [TOOL_CALLS] b[ARGS]"}[TOOL_CALLS]f[ARGS]{}',
                                "mistral")
    assert [(c.name, c.arguments, c.error) for c in calls] == [("write", {"text": "a [TOOL_CALLS] b[ARGS]"}, None),
                                                              ("f", {}, None)]


def test_text_before_python_tag_is_content_and_the_call_after_it_is_parsed():
    text = 'Let me look that up.<|python_tag|>{"name": "search", "parameters": {"q": "rlvr"}}'
    content, [call] = parse_tool_calls(text, "llama3")
    assert content == "Let me look that up." and (call.name, call.arguments) == ("search", {"q": "rlvr"})
    assert text.find(call.raw) > 0


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: f"<|python_start|>{s}<|python_end|>",
                                  lambda s: f"Checking.<|python_start|>{s}<|python_end|>"])
def test_llama4_pythonic_call_lists(wrap):
    body = "[f(a=1, b='x'), tools.g(), h(items=[1, 2], flag=True, none=None)]"
    text = wrap(body)
    content, calls = parse_tool_calls(text, "llama3")
    assert content == ("Checking." if text.startswith("Checking") else "")
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("f", {"a": 1, "b": "x"}, None), ("tools.g", {}, None), ("h", {"items": [1, 2], "flag": True, "none": None}, None)]
    assert [c.raw for c in calls] == ["f(a=1, b='x')", "tools.g()", "h(items=[1, 2], flag=True, none=None)"]


def test_pythonic_calls_with_bad_arguments_are_parse_errors():
    _, calls = parse_tool_calls("<|python_start|>[f(1), g(x=y)]<|python_end|>", "llama3")
    assert [(c.name, c.error) for c in calls] == [("f", ToolCallError.parse), ("g", ToolCallError.parse)]
    _, [call] = parse_tool_calls("<|python_start|>[f(a=<|python_end|>", "llama3")
    assert call.error == ToolCallError.parse


def test_mistral_call_id_variant():
    text = 'Sure.[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}[TOOL_CALLS]f[CALL_ID]x9[ARGS]{}'
    content, calls = parse_tool_calls(text, "mistral")
    assert content == "Sure." and [(c.name, c.arguments, c.error) for c in calls] == [
        ("get_weather", {"city": "Paris"}, None), ("f", {}, None)]


def test_mistral_list_calls_keep_the_models_own_text():
    text = '[TOOL_CALLS] [ {"name":"a","arguments":{"x":1}} ,{"name": "b",  "arguments": {}}]'
    _, calls = parse_tool_calls(text, "mistral")
    assert [c.raw for c in calls] == ['{"name":"a","arguments":{"x":1}}', '{"name": "b",  "arguments": {}}']
    assert all(c.raw in text for c in calls)  # so rollout._set_spans finds their tokens and credit reaches them
