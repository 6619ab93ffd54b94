"""`rlvr eval`: how well a policy (base model, or base + adapter) does its tasks, measured by the run's env
and rewards through the same agent loop as training.

Greedy by default; with `samples` = k > 1 each task is sampled k times at rollout.temperature and pass@k
is the share of tasks with at least one success. A trajectory succeeds when every reward with a positive
weight gives it full marks (1.0). Per trajectory: tool-call validity (calls that parsed, named a known tool
with valid arguments and ran, or failed transiently: env.conditions), format compliance (ended by the model with no unparsable call), turns,
sampled tokens, latency. Success per task family (metadata "family" or "category", else the env) and, where
tasks carry metadata "kind" (the calculator's solution shape), per kind: where two policies differ.
Under realistic tool conditions (env.conditions), the behaviours that explain success: recovery after a
tool error, retries of transient failures, unnecessary calls on tasks that need no tool (`behaviour`).
Per-task outcomes feed paired bootstrap intervals between policies (`success_differences`, rlvr/core/stats.py).
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path
from typing import Any

from rlvr.core.config import Config
from rlvr.core.contract import REJECTED_CALLS, Task, ToolCallError, Trajectory


def evaluate_policy(cfg: Config, tasks: list[Task], adapter: str | None, samples: int = 1,
                    transcripts: str | Path | None = None, label: str = "policy") -> dict[str, Any]:
    """The metrics of the base model with `adapter` (None: the base model alone) on `tasks`; with `transcripts`,
    every trajectory is appended to that JSON-lines file under `label`, to read what went wrong."""
    from rlvr.envs.registry import load_env
    from rlvr.rollout.chat import check_prompts_fit
    from rlvr.rollout.workers import RolloutWorker

    check_prompts_fit(cfg, load_env(cfg.env.name), tasks, "eval")
    policy = cfg.model_copy(deep=True)
    policy.model.init_adapter = adapter
    worker = RolloutWorker(policy)
    try:
        settings = cfg.rollout.model_copy(update={"group_size": samples, "temperature": cfg.rollout.temperature
                                                  if samples > 1 else 0.0})
        start = time.perf_counter()
        result = worker.rollout(tasks, settings, seed=cfg.seed)
        seconds = time.perf_counter() - start
        positive = [t.name for t in worker.scorer.terms if t.weight > 0]
    finally:
        worker.close()
    if result.dropped:
        raise RuntimeError(f"{result.dropped} trajectories were dropped by failing rewards: {result.errors[:3]}")
    if transcripts is not None:
        with open(transcripts, "a") as f:
            for group in result.groups:
                for t in group.trajectories:
                    f.write(json.dumps({"policy": label, "task_id": group.task.id, "answer": group.task.answer,
                                        "success": is_success(t, positive), "reward": t.reward,
                                        "reward_components": t.reward_components, "finish_reason": t.finish_reason,
                                        "messages": t.messages}, default=str) + "\n")
    return summarize(result.groups, positive, samples, seconds)


def bfcl_overrides(category: str) -> list[str]:
    """Config overrides that evaluate on a BFCL category in place of the config's env, scored by BFCL's own
    checker. The config's env conditions and reward functions belong to its own env (a calculator's no-tool
    share cannot be drawn from BFCL, its numeric answer is no BFCL score): BFCL runs clean, with its own test."""
    return ["env.name=bfcl", f"env.options={{category: {category}}}", "env.conditions={}", "rewards.functions=[]"]


def is_success(trajectory: Trajectory, rewards: list[str]) -> bool:
    return all(trajectory.reward_components.get(name, 0.0) >= 1.0 for name in rewards)


def summarize(groups, rewards: list[str], samples: int, seconds: float) -> dict[str, Any]:
    trajectories = [t for g in groups for t in g.trajectories]
    calls = [c for t in trajectories for c in t.tool_calls]
    report: dict[str, Any] = {
        "tasks": len(groups), "samples": samples,
        "success_rate": _mean(is_success(t, rewards) for t in trajectories),
        "reward_mean": _mean(t.reward for t in trajectories),
        # a transient failure is the tool's, not the call's: the call itself was valid
        "tool_call_validity": _mean(c.error in (None, ToolCallError.transient) for c in calls) if calls else None,
        "tool_calls_per_trajectory": len(calls) / len(trajectories),
        "format_compliance": _mean(t.finish_reason == "stop" and not any(c.error == ToolCallError.parse
                                                                        for c in t.tool_calls)
                                   for t in trajectories),
        "mean_turns": _mean(t.turns for t in trajectories),
        "mean_tokens": _mean(t.num_sampled_tokens for t in trajectories),
        "mean_latency_s": _mean(t.metrics.get("latency_s", 0.0) for t in trajectories),
        "seconds": seconds,
        **behaviour(groups, rewards),
        "outcomes": {g.task.id: _mean(is_success(t, rewards) for t in g.trajectories) for g in groups},
        "hallucinated_by_task": {g.task.id: _mean(hallucinated_calls(g.task, t) for t in g.trajectories)
                                 for g in groups},
    }
    if samples > 1:
        report[f"pass@{samples}"] = _mean(any(is_success(t, rewards) for t in g.trajectories) for g in groups)
        # tau-bench's reliability: every one of the k samples succeeds
        report[f"pass^{samples}"] = _mean(all(is_success(t, rewards) for t in g.trajectories) for g in groups)
    report["per_family"] = _breakdown(groups, rewards, lambda task: task.metadata.get("family")
                                      or task.metadata.get("category") or task.env)
    if any("kind" in g.task.metadata for g in groups):
        report["per_kind"] = _breakdown(groups, rewards, lambda task: str(task.metadata.get("kind", "-")))
    return report


def behaviour(groups, rewards: list[str]) -> dict[str, Any]:
    """What explains success under realistic tool conditions (env.conditions), None where nothing to count:
    recovery_rate     success among trajectories that met a tool error (any kind)
    retry_rate        share of transiently failed calls that the trajectory made again (same tool and arguments)
    unnecessary_call_rate   share of trajectories on tasks that need no tool (needs_tool=False) with a call
    no_tool_success_rate, tool_task_success_rate   success on the tasks that need no tool and on the others
                      (where some need none): restraint that gives up the tool tasks shows in the second
    hallucinated_calls_per_trajectory   calls that should not have been made, per trajectory: every call on a
                      task that needs no tool, and every call the env rejected (unknown tool, bad arguments,
                      unparseable) elsewhere
    """
    trajectories = [t for g in groups for t in g.trajectories]
    errored = [t for t in trajectories if any(c.error is not None for c in t.tool_calls)]
    failed = [(t, k) for t in trajectories for k, c in enumerate(t.tool_calls) if c.error == ToolCallError.transient]
    no_tool = [t for g in groups if g.task.needs_no_tool for t in g.trajectories]
    tool_tasks = [t for g in groups if not g.task.needs_no_tool for t in g.trajectories]
    return {
        "trajectories_with_tool_errors": len(errored),
        "recovery_rate": _mean(is_success(t, rewards) for t in errored) if errored else None,
        "transient_failures": len(failed),
        "retry_rate": _mean(any((c.name, c.arguments) == (t.tool_calls[k].name, t.tool_calls[k].arguments)
                                for c in t.tool_calls[k + 1:]) for t, k in failed) if failed else None,
        "no_tool_trajectories": len(no_tool),
        "unnecessary_call_rate": _mean(bool(t.tool_calls) for t in no_tool) if no_tool else None,
        "no_tool_success_rate": _mean(is_success(t, rewards) for t in no_tool) if no_tool else None,
        "tool_task_success_rate": (_mean(is_success(t, rewards) for t in tool_tasks)
                                   if no_tool and tool_tasks else None),
        "hallucinated_calls_per_trajectory": _mean(hallucinated_calls(g.task, t) for g in groups
                                                   for t in g.trajectories) if trajectories else None,
    }


def hallucinated_calls(task: Task, trajectory: Trajectory) -> int:
    """Calls that should not have been made: all of them on a task that needs no tool, else those the env
    rejected (unparseable, an unknown tool, bad arguments)."""
    if task.needs_no_tool:
        return len(trajectory.tool_calls)
    return sum(c.error in REJECTED_CALLS for c in trajectory.tool_calls)


def _breakdown(groups, rewards: list[str], key) -> dict[str, dict[str, Any]]:
    parts: dict[str, list[Trajectory]] = defaultdict(list)
    for g in groups:
        parts[key(g.task)] += g.trajectories
    return {name: {"trajectories": len(ts), "success_rate": _mean(is_success(t, rewards) for t in ts)}
            for name, ts in sorted(parts.items())}


def _mean(values) -> float:
    values = [float(v) for v in values]
    return statistics.fmean(values) if values else 0.0


COLUMNS = ("success_rate", "tool_call_validity", "format_compliance", "mean_turns", "mean_tokens", "mean_latency_s")
BEHAVIOUR_COLUMNS = ("tool_calls_per_trajectory", "recovery_rate", "retry_rate", "unnecessary_call_rate",
                     "hallucinated_calls_per_trajectory", "no_tool_success_rate", "tool_task_success_rate")


def comparison_table(reports: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of several reports side by side (rows: policies); the behaviour columns appear
    where some report has them (tasks under env.conditions)."""
    extra = sorted({k for r in reports.values() for k in r if k.startswith(("pass@", "pass^"))})
    behaviours = [c for c in BEHAVIOUR_COLUMNS[1:] if any(r.get(c) is not None for r in reports.values())]
    columns = ["tasks", *COLUMNS[:3], *extra, BEHAVIOUR_COLUMNS[0], *behaviours, *COLUMNS[3:]]
    return _policy_table(columns, {label: [r.get(c) for c in columns] for label, r in reports.items()})


def success_differences(reports: dict[str, dict[str, Any]], pairs: list[tuple[str, str]],
                        seed: int = 0, only: set[str] | None = None) -> dict[str, dict[str, float]]:
    """{"b - a": paired bootstrap of success b - a} for each (a, b) in `pairs`, over the tasks both were
    evaluated on (rlvr/core/stats.py), or those of them whose ids are in `only`."""
    from rlvr.core.stats import paired_bootstrap

    return {f"{b} - {a}": paired_bootstrap(restrict(reports[a]["outcomes"], only),
                                           restrict(reports[b]["outcomes"], only), seed=seed) for a, b in pairs}


def restrict(outcomes: dict[str, float], only: set[str] | None) -> dict[str, float]:
    """The outcomes of the tasks whose ids are in `only` (all of them for None)."""
    return outcomes if only is None else {t: v for t, v in outcomes.items() if t in only}


def need_parts(task_ids: set[str], no_tool: set[str],
               undemonstrated: set[str] = frozenset()) -> dict[str, set[str] | None]:
    """What differences are reported over, by the suffix their names carry: all tasks (None); where some but
    not all of them need no tool, the tool tasks and the no-tool tasks apart; where the demonstrations showed
    some but not all kinds of the tool tasks, those of the kinds shown and the `undemonstrated` ones apart."""
    parts: dict[str, set[str] | None] = {"": None}
    if no_tool and no_tool < task_ids:
        parts.update({" (tool tasks)": task_ids - no_tool, " (no-tool tasks)": no_tool})
    tool = task_ids - no_tool
    if undemonstrated and undemonstrated < tool:
        parts.update({" (demonstrated kinds)": tool - undemonstrated, " (undemonstrated kinds)": undemonstrated})
    return parts


def differences_by_need(reports: dict[str, dict[str, Any]], pairs: list[tuple[str, str]], tasks: list,
                        seed: int = 0, demonstrated_kinds: Collection | None = None) -> dict[str, dict[str, float]]:
    """`success_differences` over all tasks and, where some of `tasks` need no tool, over the tool tasks and
    the no-tool tasks apart ("b - a (tool tasks)"): a gain in restraint and one in tool use look alike overall.
    With `demonstrated_kinds` (the task kinds the SFT demonstrations showed), also over the tool tasks of
    those kinds and of the others apart: what imitation could copy, and what only the reward teaches."""
    differences = {}
    parts = need_parts({t.id for t in tasks}, {t.id for t in tasks if t.needs_no_tool},
                       undemonstrated(tasks, demonstrated_kinds))
    for suffix, only in parts.items():
        differences.update({name + suffix: d
                            for name, d in success_differences(reports, pairs, seed, only).items()})
    return differences


def undemonstrated(tasks: list, demonstrated_kinds: Collection | None) -> set[str]:
    """The ids of the tool tasks whose kind is not among `demonstrated_kinds` (none where that is None)."""
    if demonstrated_kinds is None:
        return set()
    return {t.id for t in tasks if not t.needs_no_tool and t.metadata.get("kind") not in demonstrated_kinds}


def difference_table(differences: dict[str, dict[str, float]]) -> str:
    """A Markdown table of `success_differences`, with their 95% intervals, in points."""
    lines = ["| difference | points | 95% interval | tasks |", "|---|---|---|---|"]
    lines += [f"| {name} | {d['diff'] * 100:+.1f} | [{d['low'] * 100:+.1f}, {d['high'] * 100:+.1f}] | {d['tasks']:.0f} |"
              for name, d in differences.items()]
    return "\n".join(lines)


def format_difference(d: dict[str, float]) -> str:
    """One difference of `success_differences` (or `hierarchical_bootstrap`) in points, with its interval."""
    runs = f", {d['runs']:.0f} seed{'s' if d['runs'] != 1 else ''}" if "runs" in d else ""
    return (f"{d['diff'] * 100:+.1f} points, 95% [{d['low'] * 100:+.1f}, {d['high'] * 100:+.1f}], "
            f"{d['tasks']:.0f} tasks{runs}")


def kind_table(reports: dict[str, dict[str, Any]]) -> str | None:
    """Success per task kind (columns, with their trajectory counts) of several reports (rows); None when
    the tasks carry no kind."""
    kinds = {k: part["trajectories"] for r in reports.values() for k, part in r.get("per_kind", {}).items()}
    if not kinds:
        return None
    return _policy_table([f"{k} ({n})" for k, n in kinds.items()],
                         {label: [r.get("per_kind", {}).get(k, {}).get("success_rate") for k in kinds]
                          for label, r in reports.items()})


def _policy_table(columns: list[str], rows: dict[str, list]) -> str:
    """A Markdown table with a row per policy."""
    lines = ["| policy | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {label} | " + " | ".join(map(_cell, values)) + " |" for label, values in rows.items()]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)

