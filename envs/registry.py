"""Environments by name: the built-ins, entry points of group `rlvr.envs`, or "package.module:Class".

Built-ins are named by import path, so listing them imports nothing heavy (reasoning_gym, bfcl_eval).
A third-party package registers its env in its pyproject.toml:

    [project.entry-points."rlvr.envs"]
    my_env = "my_package.envs:MyEnv"
"""

from __future__ import annotations

from rlvr.envs.base import ToolEnv
from rlvr.core.plugins import PluginError, installed_plugins, load_plugin

ENTRY_POINT_GROUP = "rlvr.envs"

BUILTIN_ENVS: dict[str, str] = {
    "calculator": "rlvr.envs.calculator:CalculatorEnv",
    "python": "rlvr.envs.python:PythonEnv",
    "sql": "rlvr.envs.sql:SqlEnv",
    "support_desk": "rlvr.envs.support_desk:SupportDeskEnv",
    "reasoning_gym": "rlvr.envs.reasoning_gym:ReasoningGymEnv",
    "bfcl": "rlvr.envs.bfcl:BfclEnv",
    "tau2": "rlvr.envs.tau2:Tau2Env",
}


def env_specs() -> dict[str, str]:
    """Every env that can be named: {name: "module:Class"} (built-ins, then installed entry points)."""
    return {**BUILTIN_ENVS, **installed_plugins(ENTRY_POINT_GROUP)}


def load_env(spec: str) -> type[ToolEnv]:
    """The env class for a name, an entry point or "package.module:Class"."""
    env = load_plugin(spec, BUILTIN_ENVS, ENTRY_POINT_GROUP, "env")
    if not (isinstance(env, type) and issubclass(env, ToolEnv)):
        raise PluginError(f"env {spec!r} is {env!r}, not a subclass of rlvr.envs.base.ToolEnv")
    return env
