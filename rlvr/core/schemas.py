"""A tool's JSON schema from its type hints and Google-style docstring, without transformers.

The output is the one `transformers.utils.get_json_schema` gives (tests/test_schemas.py compares both on
every built-in env's tools), so chat templates see the same tools; it is rebuilt here because importing
transformers loads torch, and envs must be testable in a plain Python shell. Not carried over: hints of
torch.Tensor or PIL images (transformers' "audio" and "image"), which tools never take.
"""

from __future__ import annotations

import inspect
import json
import re
import types
from typing import Any, Callable, Literal, Union, get_args, get_origin, get_type_hints

# the same patterns as transformers' chat_template_utils, so descriptions split identically
_DESCRIPTION = re.compile(r"^(.*?)[\n\s]*(Args:|Returns:|Raises:|\Z)", re.DOTALL)
_ARGS = re.compile(r"\n\s*Args:\n\s*(.*?)[\n\s]*(Returns:|Raises:|\Z)", re.DOTALL)
_ARG = re.compile(r"(?:^|\n)\s*(\w+):\s*(.*?)\s*(?=\n\s*\w+:|\Z)", re.DOTALL)
_RETURNS = re.compile(r"\n\s*Returns:\n\s*(.*?)[\n\s]*(Raises:|\Z)", re.DOTALL)
_CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)

_BASIC: dict[Any, dict[str, str]] = {int: {"type": "integer"}, float: {"type": "number"}, str: {"type": "string"},
                                     bool: {"type": "boolean"}, type(None): {"type": "null"},
                                     list: {"type": "array"}, tuple: {"type": "array"}, dict: {"type": "object"},
                                     Any: {}}


class SchemaError(TypeError):
    """A tool whose hints or docstring cannot become a JSON schema."""


def tool_schema(fn: Callable) -> dict[str, Any]:
    """{"type": "function", "function": {"name", "description", "parameters"[, "return"]}} for `fn`
    (a function or method: an unannotated `self` or `cls` is left out). Every parameter needs a type hint
    and a line under `Args:`; a description ending in `(choices: [...])` becomes an enum."""
    name = getattr(fn, "__name__", "operation")
    doc = inspect.getdoc(fn)
    if not doc:
        raise SchemaError(f"Cannot generate JSON schema for {name} because it has no docstring!")
    description, arg_docs, return_doc = _parse_docstring(doc.strip())
    parameters = _parameters(fn, name)
    returns = parameters["properties"].pop("return", None)
    if returns is not None and return_doc is not None:
        returns["description"] = return_doc
    for arg, schema in parameters["properties"].items():
        if arg not in arg_docs:
            raise SchemaError(f"Cannot generate JSON schema for {name} because the docstring has no description "
                              f"for the argument '{arg}'")
        text = arg_docs[arg]
        choices = _CHOICES.search(text)
        if choices:
            schema["enum"] = [c.strip() if isinstance(c, str) else c for c in json.loads(choices.group(1))]
            text = text[: choices.start()].strip()
        schema["description"] = text
    function = {"name": name, "description": description, "parameters": parameters}
    if returns is not None:
        function["return"] = returns
    return {"type": "function", "function": function}


def _parse_docstring(doc: str) -> tuple[str | None, dict[str, str], str | None]:
    """(description, {argument: description}, returns) of a Google-style docstring."""
    description, args, returns = _DESCRIPTION.search(doc), _ARGS.search(doc), _RETURNS.search(doc)
    arg_docs = {}
    if args:
        block = "\n".join(line for line in args.group(1).strip().split("\n") if line.strip())
        arg_docs = {m[0]: re.sub(r"\s*\n+\s*", " ", m[1].strip()) for m in _ARG.findall(block)}
    return (description.group(1).strip() if description else None, arg_docs,
            returns.group(1).strip() if returns else None)


def _parameters(fn: Callable, name: str) -> dict[str, Any]:
    hints = get_type_hints(fn)
    signature = inspect.signature(fn)
    first = next(iter(signature.parameters), None)
    receiver = (first if first in {"self", "cls"} and signature.parameters[first].annotation is inspect.Parameter.empty
                else None)
    required = []
    for param in signature.parameters.values():
        if param.name == receiver:
            continue
        if param.annotation is inspect.Parameter.empty:
            raise SchemaError(f"Argument {param.name} is missing a type hint in function {name}")
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    schema: dict[str, Any] = {"type": "object",
                              "properties": {arg: _type_schema(hint) for arg, hint in hints.items() if arg != receiver}}
    if required:
        schema["required"] = required
    return schema


def _type_schema(hint: Any) -> dict[str, Any]:
    origin, args = get_origin(hint), get_args(hint)
    if origin is None:
        return dict(_BASIC.get(hint, {"type": "object"}))
    if origin is Union or origin is types.UnionType:
        subtypes = [_type_schema(t) for t in args if t is not type(None)]
        if len(subtypes) == 1:
            schema = subtypes[0]
        elif all(s.keys() == {"type"} and isinstance(s["type"], str) for s in subtypes):
            kinds = sorted({s["type"] for s in subtypes})  # list | tuple are both "array": once
            schema = {"type": kinds[0] if len(kinds) == 1 else kinds}
        else:
            schema = {"anyOf": subtypes}  # subtypes with items/enum/... would lose them in a type list
        if type(None) in args:
            schema["nullable"] = True
        return schema
    if origin is Literal and args:
        if any(type(a) not in (int, float, str, bool, type(None)) for a in args):
            raise SchemaError("Only the valid python literals can be listed in typing.Literal.")
        kinds = list(dict.fromkeys(_BASIC[type(a)]["type"] for a in args))
        return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0])} if args else {"type": "array"}
    if origin is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 1 or ... in args:
            raise SchemaError(f"{hint}: give a fixed-length tuple of two or more types, or use list[...]")
        return {"type": "array", "prefixItems": [_type_schema(t) for t in args]}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1])} if len(args) == 2 else {"type": "object"}
    raise SchemaError(f"Couldn't parse this type hint, likely due to a custom class or object: {hint}")
