"""Loading plugins (environments, rewards) from a name, "package.module:attr", a file path or an entry point.

A spec is resolved in this order:
    1. a built-in name ("calculator", "numeric_answer")
    2. an entry point of the plugin group ("rlvr.envs" / "rlvr.rewards") installed by some package
    3. "package.module:attr"                 imported with importlib
    4. "path/to/file.py:attr"                (when the kind allows files) executed as a fresh module
Every failure names the spec and what went wrong; nothing falls back silently.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any


class PluginError(ValueError):
    """A plugin spec that cannot be resolved; the message says which and why."""


def installed_plugins(group: str) -> dict[str, str]:
    """Entry points of `group` as {name: "module:attr"}."""
    return {ep.name: ep.value for ep in entry_points(group=group)}


def load_plugin(spec: str, builtin: dict[str, str], group: str, kind: str, *, allow_files: bool = False) -> Any:
    """The object a spec names (see the module docstring). `kind` ("env", "reward") words the errors."""
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"{kind} spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec in builtin:
        return _import_attr(builtin[spec], spec, kind)
    for ep in entry_points(group=group):
        if ep.name == spec:
            try:
                return ep.load()
            except Exception as e:
                raise PluginError(f"{kind} {spec!r}: entry point {ep.value!r} (group {group}) failed to load: "
                                  f"{type(e).__name__}: {e}") from e
    target, sep, attr = spec.rpartition(":")
    if not sep:
        known = sorted(set(builtin) | set(installed_plugins(group)))
        raise PluginError(f"unknown {kind} {spec!r}; built-in and installed: {', '.join(known)}; "
                          f"or give 'package.module:name'" + (" or 'path/to/file.py:name'" if allow_files else ""))
    if target.endswith(".py") or "/" in target:
        if not allow_files:
            raise PluginError(f"{kind} {spec!r}: {kind}s are loaded from 'package.module:name', not from files")
        return _file_attr(Path(target), attr, spec, kind)
    return _import_attr(spec, spec, kind)


def _import_attr(target: str, spec: str, kind: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise PluginError(f"{kind} {spec!r}: cannot import {module_name}: {type(e).__name__}: {e}") from e
    return _attr(module, attr, spec, kind)


def _file_attr(path: Path, attr: str, spec: str, kind: str) -> Any:
    if not path.is_file():
        raise PluginError(f"{kind} {spec!r}: no file {path}")
    name = f"rlvr_plugin_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as e:
        sys.modules.pop(name, None)
        raise PluginError(f"{kind} {spec!r}: executing {path} failed: {type(e).__name__}: {e}") from e
    return _attr(module, attr, spec, kind)


def _attr(module: Any, attr: str, spec: str, kind: str) -> Any:
    try:
        return getattr(module, attr)
    except AttributeError:
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise PluginError(f"{kind} {spec!r}: {module.__name__} has no attribute {attr!r} "
                          f"(it has: {', '.join(public[:20])})") from None
