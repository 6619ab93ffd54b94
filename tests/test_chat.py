"""Tool-call parsing: well-formed, multi-call, malformed, truncated and unknown-tool output."""

import pytest

from rlvr import parse_tool_calls
from rlvr.core.contract import ToolCallError


def test_hermes_several_calls_and_content():
    text = ('Let me compute.\n<tool_call>\n{"name": "calculate", "arguments": {"expression": "2*3"}}\n</tool_call>\n'
            '<tool_call>{"name": "calculate", "arguments": "{\\"expression\\": \\"4+4\\"}"}</tool_call>')
    content, calls = parse_tool_calls(text, "hermes")
    assert content == "Let me compute."
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("calculate", {"expression": "2*3"}, None), ("calculate", {"expression": "4+4"}, None)]
    assert calls[0].raw.startswith("<tool_call>") and calls[0].raw.endswith("</tool_call>")
    assert text.find(calls[1].raw) > text.find(calls[0].raw)


@pytest.mark.parametrize("text, why", [
    ('<tool_call>{"name": "calculate", "arguments": {"expression": "2*3"</tool_call>', "invalid JSON"),
    ('<tool_call>{"name": "calculate", "arguments": {"expr', "truncated"),
    ('<tool_call>["calculate"]</tool_call>', "must be a JSON object"),
    ('<tool_call>{"arguments": {}}</tool_call>', 'needs a "name"'),
    ('<tool_call>{"name": "calculate", "arguments": [1]}</tool_call>', "must be a JSON object"),
    ('<tool_call>{"name": "calculate", "arguments": "{oops"}</tool_call>', "not valid JSON"),
])
def test_hermes_malformed_output_becomes_parse_errors(text, why):
    content, calls = parse_tool_calls(text, "hermes")
    assert len(calls) == 1 and calls[0].error == ToolCallError.parse
    assert why in calls[0].result and calls[0].raw


def test_unknown_tool_is_flagged_when_tools_are_given():
    text = '<tool_call>{"name": "search", "arguments": {}}</tool_call>'
    _, [call] = parse_tool_calls(text, "hermes", tools={"calculate"})
    assert call.error == ToolCallError.unknown_tool and "available tools: calculate" in call.result
    _, [call] = parse_tool_calls(text, "hermes")
    assert call.error is None


def test_plain_answers_have_no_calls():
    for fmt in ("hermes", "llama3", "mistral"):
        assert parse_tool_calls("The answer is 42.", fmt) == ("The answer is 42.", [])


def test_llama3_json_calls():
    text = '<|python_tag|>{"name": "calculate", "parameters": {"expression": "1+1"}}; {"name": "f", "parameters": {}}'
    content, calls = parse_tool_calls(text, "llama3")
    assert content == "" and [(c.name, c.arguments) for c in calls] == [("calculate", {"expression": "1+1"}), ("f", {})]
    _, calls = parse_tool_calls('{"name": "calculate", "parameters": {"expression": ', "llama3")
    assert calls[0].error == ToolCallError.parse


def test_mistral_both_syntaxes():
    content, calls = parse_tool_calls(
        'Sure. [TOOL_CALLS][{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]', "mistral")
    assert content == "Sure." and [(c.name, c.arguments) for c in calls] == [("a", {"x": 1}), ("b", {})]
    _, calls = parse_tool_calls('[TOOL_CALLS]a[ARGS]{"x": 1}[TOOL_CALLS]b[ARGS]{}', "mistral")
    assert [(c.name, c.arguments) for c in calls] == [("a", {"x": 1}), ("b", {})]
    _, calls = parse_tool_calls('[TOOL_CALLS][{"name": "a", "argu', "mistral")
    assert calls[0].error == ToolCallError.parse
    _, calls = parse_tool_calls('[TOOL_CALLS]a[ARGS]{"x": ', "mistral")
    assert calls[0].error == ToolCallError.parse and calls[0].name == "a"


def test_unknown_format_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown tool-call format"):
        parse_tool_calls("x", "xml")
