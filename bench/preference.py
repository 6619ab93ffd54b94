"""Standard DPO, per-call DPO and GRPO from the same SFT start with the same rollout budget (issue 23).

    python bench/preference.py [CONFIG] [key=value ...] --sft-adapter DIR [--tasks 32] [--eval-tasks 200]

The env and its tool conditions are the config's (configs/quickstart.yaml: the calculator with 30% transient
failures and a quarter of the tasks needing no tool). Every arm starts from the SFT adapter `--sft-adapter`
(without it: synth + SFT as the quickstart does) and sees `--tasks` x rollout.group_size trajectories of the
starting policy or its successors:
- DPO: one set of rollouts of the SFT policy, pairs best against worst within each group (dpo.margin);
- per-call DPO: the same pairs, the loss on the turn where each pair first diverges (dpo.credit=first_divergence);
- GRPO: --tasks / data.tasks_per_step RL steps (on-policy: each step's rollouts come from the current policy).
Then greedy evaluation on --eval-tasks held-out tasks (seed + 1) under the same conditions: success,
hallucinated calls (calls on tasks that need no tool, and calls the env rejected) per task, unnecessary-call
rate, recovery after a tool error, each difference in success with its 95% paired bootstrap interval, and
the hallucinated-call ratio per-call DPO / DPO (the published claim: about 0.6).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlvr.core.config import load_config  # noqa: E402
from rlvr.core.stats import paired_bootstrap  # noqa: E402
from rlvr.stages.evaluate import comparison_table, difference_table, evaluate_policy, success_differences  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--sft-adapter", default=None)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--eval-tasks", type=int, default=200)
    parser.add_argument("--out", default=None, help="folder for the runs and bench.json (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        run(args, Path(args.out or scratch))


def run(args, out: Path) -> None:
    from rlvr.core.tasks import env_tasks
    from rlvr.envs.registry import load_env
    from rlvr.loop import train
    from rlvr.stages.dpo import dpo, rollout_pairs

    cfg = load_config(args.config, [*args.overrides, f"output_dir={out}", "logging.wandb=disabled", "eval.every=0"])
    seconds: dict[str, float] = {}
    sft_adapter = args.sft_adapter or _sft_start(cfg)
    cfg.model.init_adapter = sft_adapter
    arms = {"SFT": sft_adapter}

    start = time.perf_counter()
    dpo_cfg = cfg.model_copy(update={"name": "preference"}, deep=True)
    dpo_cfg.dpo.tasks = args.tasks
    pairs, source = rollout_pairs(dpo_cfg)
    seconds["rollouts"] = time.perf_counter() - start
    print(f"{source['rollouts']:.0f} rollouts of the SFT policy (reward {source['rollout_reward']:.3f}): "
          f"{len(pairs)} pairs, {seconds['rollouts']:.0f} s")
    for label, name, credit in (("SFT + DPO", "dpo", "trajectory"),
                                ("SFT + per-call DPO", "per-call", "first_divergence")):
        arm = dpo_cfg.model_copy(update={"name": name}, deep=True)
        arm.dpo.credit = credit
        start = time.perf_counter()
        arms[label] = str(dpo(arm, pairs).path / "adapter")
        seconds[label] = time.perf_counter() - start

    grpo = cfg.model_copy(update={"name": "grpo"}, deep=True)
    grpo.steps = max(1, args.tasks // cfg.data.tasks_per_step)
    start = time.perf_counter()
    arms["SFT + GRPO"] = str(train(grpo).path / "adapter")
    seconds["SFT + GRPO"] = time.perf_counter() - start
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))

    seed = cfg.seed + 1
    held_out = env_tasks(load_env(cfg.env.name), args.eval_tasks, seed, "test", cfg.env.options,
                         cfg.env.conditions.no_tool_fraction)
    evaluation = cfg.model_copy(update={"seed": seed}, deep=True)
    reports = {label: evaluate_policy(evaluation, held_out, adapter, label=label) for label, adapter in arms.items()}
    print(f"\n{len(held_out)} held-out tasks (seed {seed}), greedy, under the config's tool conditions; "
          f"{len(pairs)} pairs from {source['rollouts']:.0f} rollouts; GRPO {grpo.steps} steps "
          f"({grpo.steps * cfg.data.tasks_per_step * cfg.rollout.group_size} rollouts)")
    print(comparison_table(reports))
    comparisons = [("SFT", "SFT + DPO"), ("SFT", "SFT + per-call DPO"), ("SFT", "SFT + GRPO"),
                   ("SFT + DPO", "SFT + per-call DPO"), ("SFT + DPO", "SFT + GRPO")]
    differences = success_differences(reports, comparisons, seed)
    print(difference_table(differences))
    standard, per_call = (reports[k]["hallucinated_calls_per_trajectory"] for k in ("SFT + DPO", "SFT + per-call DPO"))
    ratio = per_call / standard if standard else float("nan")
    fewer = paired_bootstrap(reports["SFT + DPO"]["hallucinated_by_task"],
                             reports["SFT + per-call DPO"]["hallucinated_by_task"], seed=seed)
    print(f"\nhallucinated calls per task: DPO {standard:.3f}, per-call DPO {per_call:.3f}, ratio {ratio:.2f} (the "
          f"published claim: about 0.6); per-call - DPO {fewer['diff']:+.3f} [{fewer['low']:+.3f}, {fewer['high']:+.3f}]")
    (out / "bench.json").write_text(json.dumps({"pairs": len(pairs), "source": source, "seconds": seconds,
                                                "reports": reports, "differences": differences,
                                                "hallucinated_ratio": ratio, "hallucinated_difference": fewer},
                                               indent=2))
    print(f"bench.json: {out / 'bench.json'}")


def _sft_start(cfg) -> str:
    from rlvr.stages.sft import sft
    from rlvr.stages.synth import Synthesizer, write_jsonl

    synthesizer = Synthesizer(cfg)
    data = Path(cfg.output_dir) / "sft.jsonl"
    write_jsonl(data, synthesizer.run(synthesizer.tasks()))
    sft_cfg = cfg.model_copy(deep=True)
    sft_cfg.sft.data = str(data)
    return str(sft(sft_cfg).path / "adapter")


if __name__ == "__main__":
    main()
