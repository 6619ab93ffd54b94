"""The quickstart's targets, with its controls: `rlvr quickstart` end to end, then a larger re-evaluation.

    python bench/quickstart.py [CONFIG] [key=value ...]   (output_dir=DIR keeps the run folder)
        --eval-tasks N (400)   held-out tasks of the re-evaluation, drawn with seed + 1
        --skip-quickstart DIR  reuse a finished quickstart folder (its report.json and adapters), or a record
                               of bench/quickstart_seeds.py (its run's resolved config, adapters and arms)
        --previous FILE        an earlier re-evaluation of the same run (its bench.json): the policies it
                               holds are reused, only the others evaluated (an arm added to the record since)

1. runs `rlvr quickstart CONFIG` and times it;
2. the random-reward control: the same RL run from the same SFT adapter with rewards shuffled within each
   batch (`algorithm.shuffle_rewards=true`); a gain it shares is drift, not learning;
3. re-evaluates base, SFT, SFT + more SFT, SFT + RL, the control (and the arms a seeds-bench record holds)
   on N held-out tasks of another seed, under the config's tool conditions, and prints each difference with
   its 95% paired bootstrap interval (overall, and on the tool and no-tool tasks apart where some need none);
4. checks the SFT start is a sensible one: its success on training-wording tasks under clean conditions;
then prints every target of the quickstart (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlvr.core.config import load_config  # noqa: E402
from rlvr.reporting import plot_policies  # noqa: E402
from rlvr.stages.quickstart import start_check  # noqa: E402
from rlvr.stages.evaluate import (comparison_table, difference_table, differences_by_need,  # noqa: E402
                                  evaluate_policy, format_difference, kind_table)


@dataclass(frozen=True)
class Arm:
    """RL from one of a run's policies (timed), against SFT from the same adapter on the same demonstrations for
    as long: labels of the start and of the two policies, the report key of RL's wall time, the runs' name. An
    arm whose RL costs what the run's own RL does (`sft` None) runs no SFT of its own: it is compared with the
    run's more SFT and its RL."""

    start: str
    rl: str
    sft: str | None
    seconds: str
    name: str

    @property
    def pairs(self) -> list[tuple[str, str]]:
        pairs = [(self.start, self.rl)]
        if self.sft is None:  # the run's more SFT had as long
            pairs.append(("SFT + more SFT", self.rl))
        else:
            pairs += [(self.start, self.sft), (self.sft, self.rl)]
        if self.start == "SFT":  # the run's own RL, from the same start
            pairs.append(("SFT + RL", self.rl))
        return pairs


# RL after SFT has had its equal time too, against as long again of SFT: does RL add what more SFT does not?
AFTER_MORE_SFT = Arm("SFT + more SFT", "SFT + more SFT + RL", "SFT + more SFT twice", "after_more_sft_rl_s",
                     "rl-after-more-sft")
# RL with the demonstrations' NLL beside its loss (algorithm.sft_coef, PPO-ptx), against SFT for its time
WITH_SFT_LOSS = Arm("SFT", "SFT + RL with SFT loss", "SFT + more SFT (its time)", "sft_loss_rl_s", "rl-sft-loss")
# RL with per-call credit (algorithm.credit): the same learner work as the run's RL, so its more SFT is the control
WITH_CREDIT = Arm("SFT", "SFT + RL with call credit", None, "credit_rl_s", "rl-credit")
# RL that rolls out more tasks until each step holds data.tasks_per_step groups with signal (DAPO's dynamic
# sampling, algorithm.filter_zero_variance): more rollout per step, so SFT for its own time is its control
WITH_DYNAMIC_SAMPLING = Arm("SFT", "SFT + RL with dynamic sampling", "SFT + more SFT (dyn. sampling's time)",
                            "dynamic_sampling_rl_s", "rl-dynamic-sampling")
# RL on answer-only tasks in GSM8K's wording (the calculator's gsm family, its training templates) instead of the
# run's: data SFT cannot use, nearer the far wording; other prompts, other rollout time, so SFT for its own time
WITH_GSM_ANSWERS = Arm("SFT", "SFT + RL on GSM answers", "SFT + more SFT (GSM RL's time)", "gsm_answers_rl_s",
                       "rl-gsm-answers")
ARMS = (AFTER_MORE_SFT, WITH_SFT_LOSS, WITH_CREDIT, WITH_DYNAMIC_SAMPLING, WITH_GSM_ANSWERS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--eval-tasks", type=int, default=400)
    parser.add_argument("--skip-quickstart", default=None)
    parser.add_argument("--previous", type=Path, default=None,
                        help="an earlier re-evaluation's bench.json of the same run: its policies are reused")
    args = parser.parse_args()
    kept = [o.partition("=")[2] for o in args.overrides if o.startswith("output_dir=")]
    with tempfile.TemporaryDirectory() as scratch:
        out = kept[-1] if kept else scratch
        total = None
        if args.skip_quickstart and Path(args.skip_quickstart).is_file():  # a seeds-bench record
            record = json.loads(Path(args.skip_quickstart).read_text())
            config = Path(scratch) / "config.yaml"
            config.write_text(record["config"])  # the RL run's, resolved; key=value overrides still apply
            args.config, root, report = str(config), Path(record["run"]), record["report"]
        elif args.skip_quickstart:
            root = Path(args.skip_quickstart)
            report = json.loads((root / "report.json").read_text())
        else:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "rlvr.cli", "quickstart", args.config, f"output_dir={out}",
                            "logging.wandb=disabled", *args.overrides], check=True)
            total = time.perf_counter() - start
            root = max(Path(out).glob("*/report.json"), key=lambda p: p.stat().st_mtime).parent
            report = json.loads((root / "report.json").read_text())
        bench(args, root, report, total)


def bench(args, root: Path, report: dict, total: float | None) -> None:
    from rlvr.envs.registry import load_env
    from rlvr.core.tasks import env_tasks

    cfg = load_config(args.config, [*args.overrides, f"output_dir={root}", "logging.wandb=disabled"])
    adapters = dict(report["adapters"])
    print(f"\nquickstart: {root}")
    if total is not None:
        print(f"quickstart wall time: {total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in report['seconds'].items())})")
    for name, d in report["differences"].items():
        print(f"  quickstart ({report['held_out_tasks']} tasks) {name}: {d['diff'] * 100:+.1f} "
              f"[{d['low'] * 100:+.1f}, {d['high'] * 100:+.1f}]")

    if "SFT + random-reward RL" not in adapters:  # a record of the seeds bench may hold it already
        start = time.perf_counter()
        adapters["SFT + random-reward RL"] = random_reward_rl(cfg, adapters["SFT"])
        print(f"random-reward RL: {time.perf_counter() - start:.0f} s")

    env = load_env(cfg.env.name)
    seed = cfg.seed + 1
    held_out = env_tasks(env, args.eval_tasks, seed, "test", cfg.env.options, cfg.env.conditions.no_tool_fraction)
    evaluation = cfg.model_copy(update={"seed": seed}, deep=True)
    reports = previous_reports(args.previous, held_out, adapters)
    reports = {label: reports.get(label) or evaluate_policy(evaluation, held_out, adapter, label=label)
               for label, adapter in adapters.items()}
    pairs = [("SFT", "SFT + RL"), ("SFT + more SFT", "SFT + RL"), ("SFT", "SFT + random-reward RL"),
             ("SFT", "SFT + more SFT")]
    pairs += [pair for arm in ARMS if arm.rl in reports for pair in arm.pairs if pair not in pairs]
    print(f"\nre-evaluation on {len(held_out)} held-out tasks (seed {seed}), under the same tool conditions:")
    print(comparison_table(reports))
    if kinds := kind_table(reports):
        print(f"success per task kind:\n{kinds}")
    # demonstrated_kinds is absent from reports written before it was recorded: no split then
    d = differences_by_need(reports, pairs, held_out, seed, report.get("demonstrated_kinds"))
    print(difference_table(d))
    plot_policies(reports, root / "policies_reevaluation.png")

    sft_start = start_check(cfg, env, adapters["SFT"])
    print(f"\nSFT start on 100 training-wording tasks, clean conditions: success {sft_start['success_rate']:.3f}")

    (root / "bench.json").write_text(json.dumps({"reevaluation": reports, "differences": d,
                                                 "sft_start_clean_train": sft_start, "total_s": total}, indent=2))
    rl, over_more, random_arm = d["SFT + RL - SFT"], d["SFT + RL - SFT + more SFT"], d["SFT + random-reward RL - SFT"]
    sft, rl_report = reports["SFT"], reports["SFT + RL"]
    print()
    if total is not None:
        print(f"target total <= 900 s: {'met' if total <= 900 else 'NOT met'} ({total:.0f} s)")
    print(f"target RL >= SFT + 15 points, interval above 0: {met(rl['diff'] >= 0.15 and rl['low'] > 0)} "
          f"({format_difference(rl)})")
    print(f"target RL >= SFT + more SFT + 10 points, interval above 0: "
          f"{met(over_more['diff'] >= 0.10 and over_more['low'] > 0)} ({format_difference(over_more)})")
    print(f"target random-reward arm < SFT + 3 points: {met(random_arm['diff'] < 0.03)} "
          f"({format_difference(random_arm)})")
    measures = {"recovery": "recovery_rate", "unnecessary calls": "unnecessary_call_rate",
                "tool-task success": "tool_task_success_rate", "calls per task": "tool_calls_per_trajectory"}
    recovery, unnecessary, tool_tasks, _ = [(sft.get(key), rl_report.get(key)) for key in measures.values()]
    doubled = None not in recovery and recovery[1] >= 2 * recovery[0] and recovery[1] > 0
    # restraint, not abandonment: a policy that stops calling at all halves unnecessary calls too, and pays
    # with the tasks that need the tool
    halved = (None not in unnecessary and unnecessary[1] <= unnecessary[0] / 2
              and rl_report["success_rate"] >= sft["success_rate"] - 0.02
              and (None in tool_tasks or tool_tasks[1] >= tool_tasks[0] - 0.02))
    evidence = ", ".join(f"{label} {rate(sft.get(key))} -> {rate(rl_report.get(key))}"
                         for label, key in measures.items())
    print(f"target learned behaviour visible (recovery x2, or unnecessary calls /2 at <= 2 points lost, "
          f"overall and on tool tasks): {met(doubled or halved)} ({evidence})")


def previous_reports(path: Path | None, held_out: list, adapters: dict) -> dict:
    """The policies of an earlier re-evaluation (bench.json) of the same adapters on the same tasks: greedy
    decoding under seeded tool conditions gives the same outcomes, so they are reused, not recomputed."""
    if path is None:
        return {}
    reports = json.loads(path.read_text())["reevaluation"]
    ids = {t.id for t in held_out}
    for label, report in reports.items():
        if set(report["outcomes"]) != ids:
            raise ValueError(f"--previous {path}: {label!r} was evaluated on other tasks than these {len(ids)}")
    print(f"reused from {path}: {', '.join(label for label in reports if label in adapters)}")
    return {label: report for label, report in reports.items() if label in adapters}


def random_reward_rl(cfg, sft_adapter: str) -> str:
    """The random-reward control: `cfg`'s RL run from the SFT adapter with rewards shuffled within each batch
    (the same reward values, assigned at random); its adapter's path."""
    from rlvr.loop import train

    control = cfg.model_copy(update={"name": f"{cfg.name}-random-reward"}, deep=True)
    control.model.init_adapter = sft_adapter
    control.algorithm.shuffle_rewards = True
    return str(train(control).path / "adapter")


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def rate(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
