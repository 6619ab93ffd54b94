"""Gold replay through the built-in tau2 env: the share of tasks whose gold actions (and gold answer) pass
the env's rewards, per domain, and every task that does not, with why (issue 25).

    python bench/tau2_gold.py [--domains retail,airline]

Each task of the package's whole data ("base" split) is replayed on a fresh env as `rlvr envs check` does:
the gold actions in order, then the gold answer (the strings tau2 checks the agent communicates). Scored by
the env's default rewards: the database hash against the one the gold actions leave (`final_state`; it can
only fail when a gold action errors and another replay differs) and tau2's communicate check. The NL
assertions need a judge and are not scored here; the tasks that carry them are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


async def replay(task, scorer):
    from rlvr.envs.base import gold_trajectory
    from rlvr.envs.tau2 import Tau2Env

    env = Tau2Env(task)
    env.reset()
    trajectory = await gold_trajectory(env, task)
    scored = await scorer.score(trajectory, task)
    errors = [f"{c.name}: {c.result[:100]}" for c in trajectory.tool_calls if c.error is not None]
    return scored, errors


def main() -> None:
    from rlvr.envs.tau2 import Tau2Env, _data
    from rlvr.rewards.scoring import Scorer

    parser = argparse.ArgumentParser()
    parser.add_argument("--domains", default="retail,airline")
    args = parser.parse_args()
    scorer = Scorer.from_specs(Tau2Env.rewards)
    for domain in args.domains.split(","):
        total = len(_data(domain, "split_tasks.json")["base"])
        tasks = Tau2Env.tasks(total, split="base", domain=domain)
        results = [asyncio.run(replay(t, scorer)) for t in tasks]
        passed = [t for t, (s, _) in zip(tasks, results) if all(s.reward_components[n] >= 1.0 for n in
                                                                 ("final_state", "tau2_communicate"))]
        print(f"{domain}: gold passes on {len(passed)} of {len(tasks)} tasks ({len(passed) / len(tasks):.3f}); "
              f"{sum(bool(t.metadata['assertions']) for t in tasks)} carry NL assertions (judge not run); "
              f"{sum(not t.gold_calls for t in tasks)} have no gold action")
        for task, (scored, errors) in zip(tasks, results):
            if task in passed and not errors:
                continue
            parts = {n: scored.reward_components[n] for n in ("final_state", "tau2_communicate")}
            print(f"  {task.id}: {parts}" + (f"; gold actions that error: {errors}" if errors else ""))


if __name__ == "__main__":
    main()
