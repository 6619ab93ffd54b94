"""rlvr.core.schemas builds the same tool schemas as transformers' get_json_schema, without importing it."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import pytest
from transformers.utils import get_json_schema

from rlvr.core.schemas import SchemaError, tool_schema
from rlvr.envs.registry import BUILTIN_ENVS, load_env


def _tools_of(name: str) -> list:
    """Every tool method a built-in env offers (its own and its toolsets'), read from a task of its source."""
    env_cls = load_env(name)
    env = env_cls(env_cls.tasks(1, seed=0)[0])
    return [getattr(type(fn.__self__), fn.__name__) for fn in env._tools.values()]


@pytest.mark.parametrize("name", sorted(BUILTIN_ENVS))
def test_every_builtin_tool_schema_matches_transformers(name):
    for fn in _tools_of(name):
        assert tool_schema(fn) == get_json_schema(fn), fn.__qualname__


def _hinted(a: int, b: float, c: str, d: bool, e: list[int], f: dict[str, float], g: tuple[int, str],
            h: Optional[str], i: int | str, j: list[int] | None, k: Literal["x", "y", 3], m: Any, n: list,
            o: Union[list[int], dict[str, int]], p: str = "z", q: int | None = None) -> dict[str, int]:
    """Every kind of hint a tool may use.

    Args:
        a: an int
        b: a float
            that goes on over two lines
        c: one of three (choices: ["tea", "coffee", "water"])
        d: a bool
        e: ints
        f: floats by name
        g: a pair
        h: maybe a string
        i: an int or a string
        j: maybe ints
        k: a literal
        m: anything
        n: a bare list
        o: ints, or ints by name
        p: a string with a default
        q: maybe an int

    Returns:
        counts by name
    """


class _Tools:
    def no_args(self) -> str:
        """Takes nothing."""

    def described(self, x: int):
        """Does one thing.

        With a second paragraph.

        Args:
            x: the thing
        Raises:
            ValueError: never
        """


@pytest.mark.parametrize("fn", [_hinted, _Tools.no_args, _Tools.described])
def test_hint_and_docstring_kinds_match_transformers(fn):
    assert tool_schema(fn) == get_json_schema(fn)


def test_missing_hint_or_description_is_refused():
    def no_hint(x):
        """Args:
        x: something"""

    def no_description(x: int):
        """Nothing about x."""

    with pytest.raises(SchemaError, match="missing a type hint"):
        tool_schema(no_hint)
    with pytest.raises(SchemaError, match="no description for the argument 'x'"):
        tool_schema(no_description)
