"""Dynamic sampling's refill rounds rolled out together (one engine batch of all their rows) against one
after another (how `algorithm.filter_zero_variance` refilled a step before).

    python bench/refill.py [CONFIG] [key=value ...] --init-adapter DIR [--steps 4] [--rounds 2]

From the adapter, in process, with the config's engine and tool conditions. Each step rolls out the refill
rounds 1..R of its tasks (the tasks and seeds EnvSource draws for them) both ways, alternating which goes first,
with no update in between, so both sample the same policy. Prints per step the seconds of each way, their ratio,
the sampled tokens, and how many trajectories sampled the same tokens both ways (every row's draws are seeded
per row; beside other rows, bf16 logits may round differently). A warm-up step comes first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlvr.core.config import load_config  # noqa: E402
from rlvr.loop import _data_source, _learner  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--init-adapter", required=True)
    parser.add_argument("--steps", type=int, default=4, help="measured steps after one warm-up step")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(args.config, [*args.overrides, "logging.wandb=disabled",
                                    f"model.init_adapter={args.init_adapter}"])
    source, learner = _data_source(cfg), _learner(cfg, None)
    source.start(learner, version=0)
    backend, rounds = source.backend, range(1, args.rounds + 1)

    ratios = []
    for step in range(1, args.steps + 2):
        def roll(batches):  # each batch of rounds in one rollout call, one call after another
            groups = []
            for batch in batches:
                tasks, seeds = source.refill_tasks(step, batch)
                groups += [g for result in backend.collect(backend.submit(tasks, cfg.rollout, seeds, min_version=0))
                           for g in result.groups]
            return groups

        def one_by_one():
            return roll([[r] for r in rounds])

        def together():
            return roll([rounds])

        timed = {}
        for name, way in (("one by one", one_by_one), ("together", together))[:: 1 if step % 2 else -1]:
            start = time.perf_counter()
            groups = way()
            timed[name] = (time.perf_counter() - start, groups)
        (sequential_s, a), (together_s, b) = timed["one by one"], timed["together"]
        rows = [(x, y) for ga, gb in zip(a, b) for x, y in zip(ga.trajectories, gb.trajectories)]
        same = sum(x.completion_ids == y.completion_ids for x, y in rows)
        sampled = [sum(t.num_sampled_tokens for g in groups for t in g.trajectories) for groups in (a, b)]
        label = "warm-up" if step == 1 else f"step {step - 1}"
        print(f"{label}: one by one {sequential_s:.1f} s, together {together_s:.1f} s "
              f"(x{sequential_s / together_s:.2f}); sampled tokens {sampled[0]} and {sampled[1]}; "
              f"{same} of {len(rows)} trajectories the same", flush=True)
        if step > 1:
            ratios.append(sequential_s / together_s)
    print(f"\n{args.rounds} refill rounds of {cfg.data.tasks_per_step} tasks x G={cfg.rollout.group_size}: "
          f"one by one / together, median of {len(ratios)} steps: x{statistics.median(ratios):.2f}")
    source.close()


if __name__ == "__main__":
    main()
