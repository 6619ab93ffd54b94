"""Rewards by name: built-ins, entry points of group `rlvr.rewards`, "package.module:function" or
"path/to/file.py:function". A third-party package registers one in its pyproject.toml:

    [project.entry-points."rlvr.rewards"]
    my_reward = "my_package.rewards:my_reward"
"""

from __future__ import annotations

from typing import Any, Callable

from rlvr.core.plugins import PluginError, installed_plugins, load_plugin

ENTRY_POINT_GROUP = "rlvr.rewards"

BUILTIN_REWARDS: dict[str, str] = {
    "exact_answer": "rlvr.rewards.answer:exact_answer",
    "numeric_answer": "rlvr.rewards.answer:numeric_answer",
    "math_verify": "rlvr.rewards.answer:math_equivalence",
    "format": "rlvr.rewards.answer:answer_format",
    "final_state": "rlvr.rewards.state:final_state_match",
    "tool_call_validity": "rlvr.rewards.calls:tool_call_validity",
    "tool_calls": "rlvr.rewards.calls:tool_calls",
    "unnecessary_calls": "rlvr.rewards.calls:unnecessary_calls",
    "llm_judge": "rlvr.rewards.judge:llm_judge",
    "tau2_communicate": "rlvr.rewards.tau2:communicate",
    "policy_compliance": "rlvr.rewards.support_desk:policy_compliance",
    "reasoning_gym": "rlvr.rewards.reasoning_gym:reasoning_gym_score",
    "bfcl": "rlvr.rewards.bfcl:bfcl_score",
    "bfcl_ast": "rlvr.rewards.bfcl:bfcl_ast",
    "bfcl_multi_turn": "rlvr.rewards.bfcl:bfcl_multi_turn",
}


def reward_specs() -> dict[str, str]:
    """Every reward that can be named: {name: "module:function"}."""
    return {**BUILTIN_REWARDS, **installed_plugins(ENTRY_POINT_GROUP)}


def load_reward(spec: str) -> Callable[..., Any]:
    fn = load_plugin(spec, BUILTIN_REWARDS, ENTRY_POINT_GROUP, "reward", allow_files=True)
    if not callable(fn):
        raise PluginError(f"reward {spec!r} is {fn!r}, not callable")
    return fn
