"""`rlvr quickstart [CONFIG]`: synth -> SFT -> GRPO -> held-out evaluation, in one command.

1. synth: gold conversations for `synth.tasks` training tasks (rlvr/stages/synth.py)
2. SFT: a LoRA adapter on them (rlvr/stages/sft.py)
3. RL: `rlvr train` for `steps` steps starting from the SFT adapter (with `algorithm.beta` > 0 its KL reference
   is that SFT start)
4. the control: the same SFT adapter trained with more SFT for as long as RL took (`sft.time_limit_s`), so a
   gain of RL over SFT is RL's and not more training's
5. greedy evaluation of base, SFT, SFT + more SFT and SFT + RL on `eval.tasks` tasks of the env's "test"
   split (for the calculator: the held-out wording family, templates never seen in training)

RL and evaluation run under `env.conditions` (transient tool failures, a per-call cost, tasks that need no
tool); the demonstrations are clean unless `synth.recovery` or `synth.restraint` add failed calls with their
retry or fix and direct answers to tasks that need no tool. Differences in success carry 95% paired bootstrap intervals.

Everything goes into one folder `<output_dir>/<name>-<time>/`: sft.jsonl, the SFT, SFT-more and RL run
folders, report.json and report.md (the tables, the differences with their intervals, policies.png, the
timings and the RL reward curve), and
eval_transcripts.jsonl (every evaluated trajectory, by policy).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from rlvr.core.config import Config

console = Console(stderr=True)


def quickstart(cfg: Config) -> Path:
    from rlvr.core.tasks import env_tasks
    from rlvr.loop import train
    from rlvr.reporting import plot_policies
    from rlvr.stages.evaluate import (comparison_table, difference_table, differences_by_need, evaluate_policy,
                                      kind_table, undemonstrated)
    from rlvr.stages.sft import sft
    from rlvr.stages.synth import Synthesizer, write_jsonl

    root = Path(cfg.output_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True)
    cfg = cfg.model_copy(update={"output_dir": str(root)}, deep=True)
    seconds: dict[str, float] = {}

    @contextmanager
    def stage(name: str, what: str):
        console.rule(f"[bold]{what}")
        start = time.perf_counter()
        yield
        seconds[name] = time.perf_counter() - start
        console.print(f"{what}: {seconds[name]:.0f} s")

    with stage("synth", "1/5 synth: gold conversations"):
        synthesizer = Synthesizer(cfg)
        demonstration_tasks = synthesizer.tasks()
        records = synthesizer.run(demonstration_tasks)
        write_jsonl(root / "sft.jsonl", records)
    kept = {r["task_id"] for r in records}  # the kinds of task the demonstrations show, apart in the report
    demonstrated_kinds = {t.metadata.get("kind") for t in demonstration_tasks
                          if t.id in kept and not t.needs_no_tool}
    with stage("sft", f"2/5 SFT on {len(records)} conversations"):
        sft_cfg = cfg.model_copy(deep=True)
        sft_cfg.sft.data = str(root / "sft.jsonl")
        sft_adapter = sft(sft_cfg).path / "adapter"
    with stage("rl", f"3/5 RL: {cfg.steps} GRPO steps from the SFT adapter"):
        rl_cfg = sft_cfg.model_copy(deep=True)  # with sft.data: algorithm.sft_coef's demonstrations
        rl_cfg.model.init_adapter = str(sft_adapter)
        rl_run = train(rl_cfg)
    with stage("sft_more", f"4/5 control: {seconds['rl']:.0f} s more SFT instead of RL"):
        more_adapter = timed_sft(sft_cfg, str(sft_adapter), seconds["rl"], f"{cfg.name}-more")
    conditions = cfg.env.conditions
    held_out = env_tasks(synthesizer.env, cfg.eval.tasks, cfg.seed, "test", cfg.env.options, conditions.no_tool_fraction)
    policies = {"base": None, "SFT": str(sft_adapter), "SFT + more SFT": str(more_adapter),
                "SFT + RL": str(rl_run.path / "adapter")}
    reports = {}
    with stage("eval", f"5/5 greedy evaluation on {len(held_out)} held-out tasks"):
        for label, adapter in policies.items():
            reports[label] = evaluate_policy(cfg, held_out, adapter, transcripts=root / "eval_transcripts.jsonl",
                                             label=label)
            console.print(f"{label}: success {reports[label]['success_rate']:.3f}")
    table = comparison_table(reports)
    differences = differences_by_need(reports, COMPARISONS, held_out, cfg.seed, demonstrated_kinds)
    sources = Counter(r["source"] for r in records)
    report = {"held_out_tasks": len(held_out),
              "no_tool_tasks": sorted(t.id for t in held_out if t.needs_no_tool),
              "undemonstrated_tasks": sorted(undemonstrated(held_out, demonstrated_kinds)),
              "conversations": len(records), "sources": dict(sources),
              "demonstrated_kinds": sorted(demonstrated_kinds, key=str),
              "seconds": seconds,
              "total_s": sum(seconds.values()), "conditions": conditions.model_dump(), "adapters": policies,
              "policies": reports,
              "differences": differences,
              "rl_gain_over_sft": differences["SFT + RL - SFT"]["diff"],
              "rl_gain_over_more_sft": differences["SFT + RL - SFT + more SFT"]["diff"]}
    (root / "report.json").write_text(json.dumps(report, indent=2))
    shutil.copy(rl_run.path / "curves.png", root / "rl_curves.png")
    plot_policies(reports, root / "policies.png")
    (root / "report.md").write_text(_markdown(cfg, report, table, difference_table(differences),
                                              kind_table(reports)))
    console.print(table)
    console.print(difference_table(differences))
    console.print(f"report: {root / 'report.md'}")
    return root


def timed_sft(cfg: Config, adapter: str, seconds: float, name: str) -> Path:
    """SFT from `adapter` on cfg.sft.data for `seconds` of wall time (the equal-time arm); its adapter's path."""
    from rlvr.stages.sft import sft

    more_cfg = cfg.model_copy(update={"name": name}, deep=True)
    more_cfg.model.init_adapter = adapter
    more_cfg.sft.time_limit_s = seconds
    more_cfg.sft.epochs = 1000.0  # the time limit ends it
    return sft(more_cfg).path / "adapter"


def start_check(cfg: Config, env, adapter: str, tasks: int = 100) -> dict:
    """Is the SFT start a sensible one? Its greedy evaluation on `tasks` training-wording tasks (seed + 1)
    under clean conditions: no tool failures, no per-call cost, every task needing the tool."""
    from rlvr.core.tasks import env_tasks
    from rlvr.stages.evaluate import evaluate_policy

    clean = cfg.model_copy(deep=True)
    clean.env.conditions = clean.env.conditions.model_copy(update={"failure_rate": 0.0, "call_cost": 0.0,
                                                                    "no_tool_fraction": 0.0})
    wording = env_tasks(env, tasks, cfg.seed + 1, "train", cfg.env.options)
    return evaluate_policy(clean, wording, adapter, label="SFT")


COMPARISONS = [("SFT", "SFT + RL"), ("SFT + more SFT", "SFT + RL"), ("SFT", "SFT + more SFT")]


def _rl_tasks(cfg: Config) -> str:
    """What sets RL's training tasks apart from the demonstrations', as the report states it."""
    parts = [f"task options {cfg.data.options}"] if cfg.data.options else ["in the training wording"]
    if cfg.data.no_tool_fraction is not None:
        parts.append(f"{cfg.data.no_tool_fraction:.0%} of them needing no tool")
    parts.append("a group's trajectories meeting the same tool failures" if cfg.rollout.env_randomness == "group"
                 else "each trajectory meeting its own tool failures")
    return " (" + ", ".join(parts) + ")"


def _rl_objective(cfg: Config) -> str:
    """RL's reward and its anchor, as the report states them."""
    functions = cfg.rewards.functions
    if not functions:
        reward = f"the {cfg.env.name} env's own success test"
    elif cfg.rewards.combine == "sum":
        reward = " ".join(f"{f.weight:+g} x {f.name}" for f in functions).lstrip("+")
    else:
        reward = "the product of " + ", ".join(f"{f.name} ^ {f.weight:g}" for f in functions)
    anchor = (f"KL to the {'SFT start' if cfg.algorithm.reference == 'start' else 'base model'}, "
              f"beta {cfg.algorithm.beta:g}" if cfg.algorithm.beta else "no KL term")
    return f"reward: {reward}; {cfg.algorithm.loss} loss, {anchor}"


def _markdown(cfg: Config, report: dict, table: str, differences: str, kinds: str | None) -> str:
    times = ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
    c = cfg.env.conditions
    cost = f"{c.call_cost:g} reward per call" if c.call_cost else "no per-call cost"
    return (f"# rlvr quickstart: {cfg.model.name} on {cfg.env.name}\n\n"
            f"**Demonstrations**: {_demonstrations(report)} of the training wording. **Tool conditions** of RL and "
            f"evaluation: {c.failure_rate:.0%} of tool calls fail transiently (seeded, an API-like error text), "
            f"{cost}, {c.no_tool_fraction:.0%} of tasks need no tool. **RL**: {cfg.steps} "
            f"steps of {cfg.data.tasks_per_step} tasks x G={cfg.rollout.group_size} on further tasks that have "
            f"answers only{_rl_tasks(cfg)}; {_rl_objective(cfg)}. **Controls**: SFT + more SFT trains RL's wall "
            f"time on the same demonstrations; the random-reward arm is in `python bench/quickstart.py`.\n\n"
            f"Greedy, on {report['held_out_tasks']} held-out tasks (the env's test split: wording the training "
            f"tasks never use), under the same conditions.\n\n{table}\n\n"
            f"Differences in success, with 95% paired bootstrap intervals over the held-out tasks:\n\n"
            f"{differences}\n\n"
            + (f"Success per task kind:\n\n{kinds}\n\n" if kinds else "") +
            f"Time: {times}; total {report['total_s']:.0f} s.\n\n"
            "![policies](policies.png)\n\n![RL reward](rl_curves.png)\n")


def _demonstrations(report: dict) -> str:
    return _conversations(report) + (
        f", of the task kinds {', '.join(map(str, report['demonstrated_kinds']))} only"
        if any(name.endswith("(undemonstrated kinds)") for name in report["differences"]) else "")


def _conversations(report: dict) -> str:
    sources = report.get("sources", {})
    if set(sources) <= {"gold"}:
        return (f"{report['conversations']} clean gold conversations (happy path: every call succeeds, every "
                "task needs the tool)")
    failed = sources.get("gold+transient", 0) + sources.get("gold+bad_arguments", 0)
    return (f"{report['conversations']} gold conversations: {sources.get('gold', 0)} on the happy path, {failed} "
            f"in which one call first fails ({sources.get('gold+transient', 0)} transiently, then retried; "
            f"{sources.get('gold+bad_arguments', 0)} with a wrong argument name, then fixed; the failed call is "
            f"context, not trained on when the env rejected it), {sources.get('direct', 0)} answering a task "
            "that needs no tool directly")
