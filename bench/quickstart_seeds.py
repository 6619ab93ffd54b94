"""The quickstart's differences across training seeds: one seed's run is one draw of demonstrations, SFT order,
RL samples and held-out tasks, and in this setting what RL learns has changed from seed to seed
(docs/benchmarks.md). This bench runs `rlvr quickstart` once per seed and pools what they measured.

    python bench/quickstart_seeds.py [CONFIG] [key=value ...] --seeds 0 1 2   (output_dir=DIR keeps the runs)
    python bench/quickstart_seeds.py [CONFIG] --runs DIR [DIR ...]            (finished quickstart folders)

Prints, per seed, the SFT start's success on 100 training-wording tasks under clean conditions (is the start
a sensible one?), each policy's success and behaviours on the quickstart's held-out tasks, and its
differences; then each difference over all seeds: the mean of the seeds' differences with a 95% interval
from a hierarchical bootstrap (seeds, then tasks within each), overall and on the tool and no-tool tasks
apart, and the quickstart's success targets judged on those. The random-reward control is bench/quickstart.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlvr.core.config import load_config  # noqa: E402
from rlvr.core.stats import hierarchical_bootstrap  # noqa: E402
from rlvr.stages.evaluate import difference_table, format_difference  # noqa: E402
from rlvr.stages.quickstart import COMPARISONS, start_check  # noqa: E402

BEHAVIOURS = {"success": "success_rate", "tool tasks": "tool_task_success_rate",
              "no-tool tasks": "no_tool_success_rate", "unnecessary calls": "unnecessary_call_rate",
              "recovery": "recovery_rate", "calls / task": "tool_calls_per_trajectory"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--seeds", type=int, nargs="+")
    group.add_argument("--runs", nargs="+", type=Path)
    args = parser.parse_args()
    kept = [o.partition("=")[2] for o in args.overrides if o.startswith("output_dir=")]
    with tempfile.TemporaryDirectory() as scratch:
        runs = args.runs or [quickstart(args.config, args.overrides, seed, Path(kept[-1] if kept else scratch))
                             for seed in args.seeds]
        pool([load_run(root) for root in runs])


def quickstart(config: str, overrides: list[str], seed: int, out: Path) -> Path:
    out = out / f"seed{seed}"
    subprocess.run([sys.executable, "-m", "rlvr.cli", "quickstart", config, *overrides, f"seed={seed}",
                    f"output_dir={out}", "logging.wandb=disabled"], check=True)
    return max(out.glob("*/report.json"), key=lambda p: p.stat().st_mtime).parent


def load_run(root: Path) -> dict:
    """A finished quickstart folder: its report, its resolved config (the RL run's) and held-out tasks."""
    from rlvr.core.tasks import env_tasks
    from rlvr.envs.registry import load_env

    report = json.loads((root / "report.json").read_text())
    cfg = load_config(str(Path(report["adapters"]["SFT + RL"]).parent / "config.yaml"), [])
    env = load_env(cfg.env.name)
    held_out = env_tasks(env, report["held_out_tasks"], cfg.seed, "test", cfg.env.options,
                         cfg.env.conditions.no_tool_fraction)
    if set(report["policies"]["SFT"]["outcomes"]) != {t.id for t in held_out}:
        raise ValueError(f"{root}: the held-out tasks rebuilt from the run's config are not the ones it evaluated")
    return {"root": root, "cfg": cfg, "env": env, "report": report, "held_out": held_out}


def pool(runs: list[dict]) -> None:
    parts = {"": None}
    no_tool = [{t.id for t in run["held_out"] if t.needs_no_tool} for run in runs]
    if all(no_tool) and all(len(ids) < len(run["held_out"]) for ids, run in zip(no_tool, runs)):
        parts.update({" (tool tasks)": False, " (no-tool tasks)": True})
    for run in runs:
        report, cfg = run["report"], run["cfg"]
        start = start_check(cfg, run["env"], report["adapters"]["SFT"])["success_rate"]
        print(f"\nseed {cfg.seed}: {run['root']} ({report['total_s']:.0f} s; "
              + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items()) + ")")
        print(f"  SFT start on 100 training-wording tasks, clean conditions: success {start:.3f}")
        for label, r in report["policies"].items():
            print(f"  {label:16s} " + "  ".join(f"{name} {_rate(r.get(key))}" for name, key in BEHAVIOURS.items()))
        for name in (f"{b} - {a}" for a, b in COMPARISONS):
            d = report["differences"][name]
            print(f"  {name}: {format_difference(d)}")

    differences = {}
    for a, b in COMPARISONS:
        for suffix, needs_no_tool in parts.items():
            pairs = []
            for run, ids in zip(runs, no_tool):
                policies = run["report"]["policies"]
                keep = (lambda t: True) if needs_no_tool is None else (lambda t, ids=ids: (t in ids) == needs_no_tool)
                pairs.append(tuple({t: v for t, v in policies[label]["outcomes"].items() if keep(t)}
                                   for label in (a, b)))
            differences[f"{b} - {a}{suffix}"] = hierarchical_bootstrap(pairs)
    seeds = ", ".join(str(run["cfg"].seed) for run in runs)
    print(f"\nover {len(runs)} seeds ({seeds}): the mean of the seeds' differences, 95% hierarchical bootstrap "
          "(seeds, then tasks)")
    print(difference_table(differences))
    print("\nbehaviours, mean over the seeds:")
    for label in runs[0]["report"]["policies"]:
        means = {name: _mean([run["report"]["policies"][label].get(key) for run in runs])
                 for name, key in BEHAVIOURS.items()}
        print(f"  {label:16s} " + "  ".join(f"{name} {_rate(v)}" for name, v in means.items()))
    rl, over_more = differences["SFT + RL - SFT"], differences["SFT + RL - SFT + more SFT"]
    print(f"\ntarget RL >= SFT + 15 points, interval above 0, over the seeds: "
          f"{_met(rl['diff'] >= 0.15 and rl['low'] > 0)} ({format_difference(rl)})")
    print(f"target RL >= SFT + more SFT + 10 points, interval above 0, over the seeds: "
          f"{_met(over_more['diff'] >= 0.10 and over_more['low'] > 0)} ({format_difference(over_more)})")
    signs = [run["report"]["differences"]["SFT + RL - SFT + more SFT"]["diff"] > 0 for run in runs]
    print(f"seeds where RL beats more SFT: {sum(signs)} of {len(runs)}")


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _rate(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
