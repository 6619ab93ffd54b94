"""The quickstart's differences across training seeds: one seed's run is one draw of demonstrations, SFT order,
RL samples and held-out tasks, and in this setting what RL learns has changed from seed to seed
(docs/benchmarks.md). This bench runs `rlvr quickstart` once per seed and pools what they measured.

    python bench/quickstart_seeds.py [CONFIG] [key=value ...] --seeds 0 1 2 [--control] [--save DIR]
    python bench/quickstart_seeds.py --runs PATH [PATH ...] [--control] [--after-more-sft] [--sft-loss COEF]
                                     [--credit MODE] [--dynamic-sampling] [--gsm-answers] [--bfcl CATEGORY ...]
                                     [--far-wording N] [--save DIR]

`--runs` takes finished quickstart folders or the records this bench saves. A record (`--save DIR`:
DIR/seed<N>.json) holds what pooling needs and nothing large: the run's report (every policy's outcome per
held-out task), its resolved config, which held-out tasks need no tool, the SFT start check and the CPU, so
seeds run in different sessions can be pooled later. `--control` adds the random-reward control to each run
folder's record: the run's RL from its SFT adapter with rewards shuffled within each batch, evaluated on the
same held-out tasks, so it pairs with the run's own SFT. `--bfcl CATEGORY ...` adds every policy of each run on
all of each BFCL category's entries, as `rlvr eval --bfcl` scores them, and pools the seeds that have them (a record
saved without them whose adapters are gone is named and left out) (`irrelevance`: does the restraint RL
learns on the env's no-tool tasks carry to tools and wording nobody trained on, or does fine-tuning cost it?
`live_relevance`, its counterpart: is a relevant tool still called?). `--far-wording N` adds every policy of each
run on N problems in GSM8K's wording (the calculator's "gsm" family: wording written outside this project, which
the held-out family may be too close to training to test), under the run's tool conditions.
`--after-more-sft` asks whether RL adds what SFT does not once SFT has had its equal time too: RL from each run's
more-SFT adapter (timed), against SFT from that adapter on the same demonstrations for as long ("SFT + more SFT +
RL" and "SFT + more SFT twice").
`--sft-loss COEF` asks whether RL keeps what the demonstrations teach when their NLL stays in its loss
(`algorithm.sft_coef=COEF`, InstructGPT's PPO-ptx): RL so from each run's SFT adapter (timed), against SFT from
it for as long ("SFT + RL with SFT loss" and "SFT + more SFT (its time)"), and against the run's own RL.
`--credit MODE` asks what per-call credit adds (`algorithm.credit=MODE`: each call's checks and the env's progress
score on the call's own tokens): RL so from each run's SFT adapter, against the run's RL and its more SFT (the
call term costs the learner nothing, so the run's more SFT had as long; both times are printed).
`--dynamic-sampling` asks whether RL learns more when every step trains on groups that carry signal (most of a
step's groups are flat in this setting: all right or all wrong): RL from each run's SFT adapter that rolls out up
to `algorithm.refill_rounds` more batches of tasks per step until `data.tasks_per_step` groups differ within
(`algorithm.filter_zero_variance=true`, DAPO's dynamic sampling), against SFT from it for as long and the run's RL.
`--gsm-answers` asks whether RL gains more from answers SFT cannot use when they are worded as users word their
problems: RL from each run's SFT adapter on answer-only tasks in GSM8K's wording (`data.options={family: gsm}`: the
gsm family's training templates, never those its test split and `--far-wording` draw from), against SFT from it
for as long and the run's RL.

Prints, per seed, the SFT start's success on 100 training-wording tasks under clean conditions (is the start
a sensible one?), each policy's success and behaviours on the quickstart's held-out tasks, and its
differences; then each difference over all seeds: the mean of the seeds' differences with a 95% interval
from a hierarchical bootstrap (seeds, then tasks within each), overall and on the tool and no-tool tasks
apart, and the quickstart's targets judged on those (the control's over the seeds that have it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlvr.core.config import CREDIT_NAMES, load_config  # noqa: E402
from rlvr.core.stats import hierarchical_bootstrap  # noqa: E402
from rlvr.stages.evaluate import (difference_table, format_difference, need_parts, restrict,  # noqa: E402
                                  success_differences)
from rlvr.stages.quickstart import COMPARISONS, start_check, timed_sft  # noqa: E402

from quickstart import (AFTER_MORE_SFT, ARMS, WITH_CREDIT, Arm, WITH_DYNAMIC_SAMPLING, WITH_GSM_ANSWERS,  # noqa: E402
                        WITH_SFT_LOSS, met, random_reward_rl, rate)  # bench/quickstart.py's

CONTROL = ("SFT", "SFT + random-reward RL")


# every difference the records can hold
PAIRS = [*COMPARISONS, CONTROL, *(pair for arm in ARMS for pair in arm.pairs)]

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
    parser.add_argument("--control", action="store_true", help="add the random-reward control to run folders")
    parser.add_argument("--after-more-sft", action="store_true",
                        help="add RL from each run's more-SFT adapter and, for the same time, SFT from it")
    parser.add_argument("--sft-loss", type=float, metavar="COEF", default=None,
                        help="add RL from each run's SFT adapter with algorithm.sft_coef=COEF on the run's "
                             "demonstrations and, for the same time, SFT from it")
    parser.add_argument("--credit", metavar="MODE", default=None, choices=[n for n in CREDIT_NAMES if n != "none"],
                        help="add RL from each run's SFT adapter with algorithm.credit=MODE (per-call credit), "
                             "against the run's RL and its more SFT")
    parser.add_argument("--dynamic-sampling", action="store_true",
                        help="add RL from each run's SFT adapter with DAPO's dynamic sampling "
                             "(algorithm.filter_zero_variance=true) and, for the same time, SFT from it")
    parser.add_argument("--gsm-answers", action="store_true",
                        help="add RL from each run's SFT adapter on answer-only tasks in GSM8K's wording (the "
                             "calculator's gsm family) and, for the same time, SFT from it")
    parser.add_argument("--bfcl", metavar="CATEGORY", nargs="+", default=[],
                        help="also evaluate every policy of each run on all of these BFCL categories' entries")
    parser.add_argument("--far-wording", type=int, metavar="N", default=0,
                        help="also evaluate every policy of each run on N problems in GSM8K's wording")
    parser.add_argument("--save", type=Path, default=None, help="write each seed's record to DIR/seed<N>.json")
    args = parser.parse_args()
    kept = [o.partition("=")[2] for o in args.overrides if o.startswith("output_dir=")]
    with tempfile.TemporaryDirectory() as scratch:
        paths = args.runs or [quickstart(args.config, args.overrides, seed, Path(kept[-1] if kept else scratch))
                              for seed in args.seeds]
        records = [json.loads(path.read_text()) if path.is_file() else record(path, args.control)
                   for path in paths]
        for r in records:
            if args.after_more_sft and AFTER_MORE_SFT.rl not in r["report"]["policies"]:
                add_arm(r, AFTER_MORE_SFT)
            if args.sft_loss is not None and WITH_SFT_LOSS.rl not in r["report"]["policies"]:
                add_arm(r, WITH_SFT_LOSS, [f"algorithm.sft_coef={args.sft_loss}"])
            if args.credit is not None and WITH_CREDIT.rl not in r["report"]["policies"]:
                add_arm(r, WITH_CREDIT, [f"algorithm.credit={args.credit}"])
            if args.dynamic_sampling and WITH_DYNAMIC_SAMPLING.rl not in r["report"]["policies"]:
                add_arm(r, WITH_DYNAMIC_SAMPLING, ["algorithm.filter_zero_variance=true"])
            if args.gsm_answers and WITH_GSM_ANSWERS.rl not in r["report"]["policies"]:
                add_arm(r, WITH_GSM_ANSWERS, ["data.options={family: gsm}"])
            for category in args.bfcl:
                if missing := unevaluated(r, r.get("bfcl", {}).get(category, {}), f"BFCL {category}"):
                    add_bfcl(r, category, missing)
            if args.far_wording and (missing := unevaluated(r, r.get("far_wording", {}), "far wording")):
                add_far_wording(r, args.far_wording, missing)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for r in records:
            (args.save / f"seed{r['seed']}.json").write_text(json.dumps(r, indent=1))
        print(f"records: {args.save}")
    pool(records)
    for category in args.bfcl:
        pool_evaluation(records, lambda r: r.get("bfcl", {}).get(category),
                        f"BFCL {category}, every entry, BFCL's checker, clean conditions")
    if args.far_wording or any("far_wording" in r for r in records):
        pool_evaluation(records, lambda r: r.get("far_wording"),
                        "far wording: GSM8K's (the calculator's gsm family), the run's tool conditions")


def quickstart(config: str, overrides: list[str], seed: int, out: Path) -> Path:
    out = out / f"seed{seed}"
    subprocess.run([sys.executable, "-m", "rlvr.cli", "quickstart", config, *overrides, f"seed={seed}",
                    f"output_dir={out}", "logging.wandb=disabled"], check=True)
    return max(out.glob("*/report.json"), key=lambda p: p.stat().st_mtime).parent


def record(root: Path, control: bool) -> dict:
    """What pooling needs of a finished quickstart folder (its SFT adapter is needed once: the start check,
    and the control's start)."""
    import torch

    from rlvr.envs.registry import load_env
    from rlvr.training.models import bf16_supported

    report = json.loads((root / "report.json").read_text())
    config = rl_config(report)
    cfg = load_config(str(config), [])
    env = load_env(cfg.env.name)
    start = start_check(cfg, env, report["adapters"]["SFT"])
    if control:
        add_control(report, cfg, env)
    return {"seed": cfg.seed, "run": str(root), "config": config.read_text(), "report": report,
            "no_tool_tasks": report["no_tool_tasks"], "sft_start_clean_train": start["success_rate"],
            "cpu": {"cores": os.cpu_count(), "bf16": bf16_supported(torch.device("cpu"))}}


def rl_config(report: dict) -> Path:
    """The run's RL config, resolved (every arm added later starts from it)."""
    return Path(report["adapters"]["SFT + RL"]).parent / "config.yaml"


def held_out_tasks(report: dict, cfg, env) -> list:
    """The run's held-out tasks, rebuilt from its config (checked against its report)."""
    from rlvr.core.tasks import env_tasks

    conditions = cfg.env.conditions
    held_out = env_tasks(env, cfg.eval.tasks, cfg.seed, "test", cfg.env.options, conditions.no_tool_fraction)
    if {t.id for t in held_out} != set(report["policies"]["SFT"]["outcomes"]):
        raise RuntimeError(f"the held-out tasks rebuilt from {cfg.output_dir}'s config differ from its report's")
    return held_out


def add_policies(report: dict, cfg, held_out: list, adapters: dict[str, str], pairs: list) -> None:
    """Evaluate `adapters` ({label: path}) on the run's held-out tasks, with the differences `pairs`, into `report`."""
    from rlvr.stages.evaluate import differences_by_need, evaluate_policy

    for label, adapter in adapters.items():
        report["adapters"][label] = adapter
        report["policies"][label] = evaluate_policy(cfg, held_out, adapter, label=label)
    report["differences"].update(differences_by_need(report["policies"], pairs, held_out, cfg.seed,
                                                     report.get("demonstrated_kinds")))


def add_control(report: dict, cfg, env) -> None:
    """The random-reward control of the run `report` describes, evaluated on its held-out tasks, into it."""
    held_out = held_out_tasks(report, cfg, env)
    start = time.perf_counter()
    adapter = random_reward_rl(cfg, report["adapters"]["SFT"])
    report["control_rl_s"] = time.perf_counter() - start
    add_policies(report, cfg, held_out, {CONTROL[1]: adapter}, [CONTROL])


def add_arm(r: dict, arm: Arm, overrides: list[str] = ()) -> None:
    """The run's RL (with `overrides` on its config) from the arm's start, timed, then SFT from the same adapter on
    the run's demonstrations for as long; both evaluated on the run's held-out tasks, into the record."""
    from rlvr.envs.registry import load_env
    from rlvr.loop import train

    report = r["report"]
    config, demonstrations = str(rl_config(report)), f"sft.data={Path(r['run']) / 'sft.jsonl'}"
    cfg = load_config(config, [demonstrations])  # the equal-time SFT's: without the RL overrides
    held_out = held_out_tasks(report, cfg, load_env(cfg.env.name))
    start_adapter = report["adapters"][arm.start]
    rl_cfg = load_config(config, [demonstrations, *overrides, f"name={cfg.name}-{arm.name}",
                                  f"model.init_adapter={start_adapter}"])
    start = time.perf_counter()
    rl_adapter = str(train(rl_cfg).path / "adapter")
    report[arm.seconds] = time.perf_counter() - start
    adapters = {arm.rl: rl_adapter}
    if arm.sft is not None:
        adapters[arm.sft] = str(timed_sft(cfg, start_adapter, report[arm.seconds], f"{cfg.name}-{arm.name}-more"))
    pairs = [pair for pair in PAIRS if arm.rl in pair or arm.sft in pair]
    add_policies(report, cfg, held_out, adapters, pairs)


def add_bfcl(r: dict, category: str, adapters: dict[str, str | None]) -> None:
    """Policies of the record's run ({label: adapter}, None: base) on all of BFCL's `category` entries, under the RL
    run's rollout settings, clean conditions and BFCL's own checker (`rlvr eval --bfcl`), into r["bfcl"][category]."""
    from rlvr.core.tasks import env_tasks
    from rlvr.envs.bfcl import entry_count
    from rlvr.envs.registry import load_env
    from rlvr.stages.evaluate import bfcl_overrides, evaluate_policy

    cfg = load_config(str(rl_config(r["report"])), bfcl_overrides(category))
    tasks = env_tasks(load_env("bfcl"), entry_count(category), cfg.seed, "all", cfg.env.options)
    r.setdefault("bfcl", {}).setdefault(category, {}).update(
        {label: evaluate_policy(cfg, tasks, adapter, label=label) for label, adapter in adapters.items()})


def unevaluated(r: dict, reports: dict, what: str) -> dict[str, str | None]:
    """The record's policies ({label: adapter}, None: base) that `reports` lacks; none, with a line saying so, when
    their adapters are gone."""
    missing = {label: path for label, path in r["report"]["adapters"].items() if label not in reports}
    if any(path and not Path(path).is_dir() for path in missing.values()):
        print(f"seed {r['seed']}: its record has no {what} for {', '.join(missing)} and their adapters (under "
              f"{r['run']}) are gone: left out of {what}")
        return {}
    return missing


def add_far_wording(r: dict, n: int, adapters: dict[str, str | None]) -> None:
    """Policies of the record's run on `n` problems of the calculator's "gsm" family (GSM8K's wording, written
    outside this project; no no-tool tasks), drawn with the run's seed, under the RL run's tool conditions, into
    r["far_wording"]: does what each policy learned carry past the project's own wordings?"""
    from rlvr.core.tasks import env_tasks
    from rlvr.envs.registry import load_env
    from rlvr.stages.evaluate import evaluate_policy

    cfg = load_config(str(rl_config(r["report"])))
    tasks = env_tasks(load_env(cfg.env.name), n, r["seed"], "test", {"family": "gsm"})
    r.setdefault("far_wording", {}).update(
        {label: evaluate_policy(cfg, tasks, adapter, label=label) for label, adapter in adapters.items()})


def pool_evaluation(records: list[dict], reports_of, title: str) -> None:
    """Each policy's success on an evaluation besides the held-out tasks (`reports_of(record)`: {label: report},
    None where the record has none), per seed and its differences, then over the seeds."""
    pairs = [("base", "SFT"), *PAIRS]
    records = [r for r in records if reports_of(r)]
    print(f"\n{title}:")
    differences = {}
    for r in records:
        reports = reports_of(r)
        for label, report in reports.items():
            print(f"  seed {r['seed']} {label:22s} success {rate(report['success_rate'])}  "
                  f"calls / task {rate(report['tool_calls_per_trajectory'])}  tasks {report['tasks']}")
        present = [(a, b) for a, b in pairs if {a, b} <= reports.keys()]
        for name, d in success_differences(reports, present, r["seed"]).items():
            print(f"  seed {r['seed']} {name}: {format_difference(d)}")
    for a, b in pairs:
        having = [reports_of(r) for r in records if {a, b} <= reports_of(r).keys()]
        if having:
            differences[f"{b} - {a}"] = hierarchical_bootstrap([(rep[a]["outcomes"], rep[b]["outcomes"])
                                                                for rep in having])
    print(f"over seeds {', '.join(str(r['seed']) for r in records)}, 95% hierarchical bootstrap:")
    print(difference_table(differences))


def pool(records: list[dict]) -> None:
    parts = [need_parts(set(r["report"]["policies"]["SFT"]["outcomes"]), set(r["no_tool_tasks"]),
                        set(r["report"].get("undemonstrated_tasks", ()))) for r in records]
    for r in records:
        report = r["report"]
        print(f"\nseed {r['seed']}: {r['run']} ({report['total_s']:.0f} s: "
              + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
              + f"; {r['cpu']['cores']} cores, bf16 {'yes' if r['cpu']['bf16'] else 'no'})")
        print(f"  SFT start on 100 training-wording tasks, clean conditions: {r['sft_start_clean_train']:.3f}")
        for label, policy in report["policies"].items():
            print(f"  {label:22s} " + "  ".join(f"{name} {rate(policy.get(key))}"
                                                for name, key in BEHAVIOURS.items()))
        for name in (f"{b} - {a}" for a, b in PAIRS if f"{b} - {a}" in report["differences"]):
            print(f"  {name}: {format_difference(report['differences'][name])}")
        if "control_rl_s" in report:
            print(f"  random-reward RL: {report['control_rl_s']:.0f} s")
        for arm in (arm for arm in ARMS if arm.seconds in report):
            print(f"  {arm.rl}" + (f" (and {arm.sft})" if arm.sft else f" (the run's RL {report['seconds']['rl']:.0f} s)")
                  + f": {report[arm.seconds]:.0f} s")

    differences = {}
    for suffix in (s for s in parts[0] if all(s in p for p in parts)):  # a split only where every seed has it
        for a, b in PAIRS:
            having = [(r, p) for r, p in zip(records, parts) if {a, b} <= r["report"]["policies"].keys()]
            if having:  # the control and the arms only where they were run
                differences[f"{b} - {a}{suffix}"] = hierarchical_bootstrap(
                    [tuple(restrict(r["report"]["policies"][label]["outcomes"], p[suffix]) for label in (a, b))
                     for r, p in having])
    seeds = ", ".join(str(r["seed"]) for r in records)
    controlled = [str(r["seed"]) for r in records if CONTROL[1] in r["report"]["policies"]]
    partial = f"; the control's over seeds {', '.join(controlled)}" if 0 < len(controlled) < len(records) else ""
    for arm in ARMS:
        having = [str(r["seed"]) for r in records if arm.rl in r["report"]["policies"]]
        partial += f"; {arm.rl} over seeds {', '.join(having)}" if 0 < len(having) < len(records) else ""
    print(f"\nover seeds {seeds}: the mean of the seeds' differences, 95% hierarchical bootstrap (seeds, then "
          f"tasks){partial}")
    print(difference_table(differences))
    print("\nbehaviours, mean over the seeds that have the policy:")
    for label in dict.fromkeys(label for r in records for label in r["report"]["policies"]):
        means = {name: _mean([r["report"]["policies"][label].get(key) for r in records
                              if label in r["report"]["policies"]]) for name, key in BEHAVIOURS.items()}
        print(f"  {label:22s} " + "  ".join(f"{name} {rate(v)}" for name, v in means.items()))
    rl, over_more = differences["SFT + RL - SFT"], differences["SFT + RL - SFT + more SFT"]
    print(f"\ntarget RL >= SFT + 15 points, interval above 0, over the seeds: "
          f"{met(rl['diff'] >= 0.15 and rl['low'] > 0)} ({format_difference(rl)})")
    print(f"target RL >= SFT + more SFT + 10 points, interval above 0, over the seeds: "
          f"{met(over_more['diff'] >= 0.10 and over_more['low'] > 0)} ({format_difference(over_more)})")
    if random_arm := differences.get(f"{CONTROL[1]} - {CONTROL[0]}"):
        print(f"target random-reward arm < SFT + 3 points, over seeds {', '.join(controlled)}: "
              f"{met(random_arm['diff'] < 0.03)} ({format_difference(random_arm)})")
    wins = sum(r["report"]["differences"]["SFT + RL - SFT + more SFT"]["diff"] > 0 for r in records)
    print(f"seeds where RL beats more SFT: {wins} of {len(records)}")


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


if __name__ == "__main__":
    main()
