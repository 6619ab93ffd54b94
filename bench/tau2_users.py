"""Rollout throughput with an LLM user simulator against the scripted user, on the same tau2 tasks (issue 25).

    python bench/tau2_users.py [--domain retail] [--tasks 4] [--group-size 4] [--rounds 2]
                               [--model smollm2-135m-instruct] [--user-model smollm2-135m-instruct]

One rollout worker serves the policy and, on its own engine, the user model (`rollout.local_chat_model`). Each
round rolls the same tasks and seeds out twice, alternating which goes first: with the scripted user (it
confirms once, then the conversation ends) and with the LLM user (`user_url: local`: it plays the customer
from the task's instructions, up to 10 turns, until it writes the stop phrase). Printed per arm, medians over
rounds: wall time, the policy's sampled tokens and tokens/s, the user's turns and words per trajectory, and
how trajectories ended. The two arms do different work (an LLM user keeps the conversation going), so both
the policy's tokens/s and the wall time per trajectory are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--domain", default="retail")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--user-model", default="smollm2-135m-instruct")
    parser.add_argument("--adapter", default=None, help="the policy's LoRA adapter (e.g. an SFT run's)")
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()

    from rlvr.core.config import load_config
    from rlvr.envs.tau2 import Tau2Env
    from rlvr.rollout.workers import RolloutWorker

    overrides = [f"model.name={args.model}", "env.name=tau2", f"rollout.local_chat_model={args.user_model}",
                 f"rollout.group_size={args.group_size}", f"rollout.max_turns={args.max_turns}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.max_total_tokens=2048",
                 "output_dir=/tmp/rlvr-bench-tau2-users"]
    if args.adapter:
        overrides.append(f"model.init_adapter={args.adapter}")
    cfg = load_config(None, overrides)
    arms = {"scripted": Tau2Env.tasks(args.tasks, 0, args.split, args.domain),
            "LLM user": Tau2Env.tasks(args.tasks, 0, args.split, args.domain, user_url="local")}
    worker = RolloutWorker(cfg)
    tokenizer = worker.renderer.tokenizer
    rows: dict[str, list[dict]] = {arm: [] for arm in arms}
    try:
        worker.rollout(arms["scripted"][:1], cfg.rollout.model_copy(update={"group_size": 1}), seed=99)  # warm-up
        for r in range(args.rounds):
            for arm in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                start = time.perf_counter()
                result = worker.rollout(arms[arm], cfg.rollout, seed=r)
                seconds = time.perf_counter() - start
                trajectories = [t for g in result.groups for t in g.trajectories]
                users = [[m["content"] for m in t.messages[2:] if m["role"] == "user"] for t in trajectories]
                sampled = sum(t.num_sampled_tokens for t in trajectories)
                rows[arm].append({
                    "seconds": seconds, "sampled": sampled, "tokens_per_s": sampled / seconds,
                    "s_per_trajectory": seconds / len(trajectories),
                    "policy_turns": statistics.mean(t.turns for t in trajectories),
                    "user_turns": statistics.mean(len(u) for u in users),
                    "user_tokens": statistics.mean(sum(len(tokenizer(x)["input_ids"]) for x in u) for u in users),
                    "tool_calls": statistics.mean(len(t.tool_calls) for t in trajectories),
                    "ended": {f: sum(t.finish_reason == f for t in trajectories) for f in ("stop", "max_tokens",
                                                                                          "max_turns")}})
                print(f"round {r + 1} {arm}: {seconds:.1f} s, {sampled} sampled tokens", flush=True)
    finally:
        worker.close()

    n = args.tasks * args.group_size
    print(f"\n{args.domain} {args.split}, {args.tasks} tasks x G={args.group_size} = {n} trajectories, policy "
          f"{args.model}{' + ' + args.adapter if args.adapter else ''}, user model {args.user_model}; "
          f"medians of {args.rounds} alternating rounds\n")
    keys = [("seconds", "wall time, s", "{:.1f}"), ("s_per_trajectory", "wall per trajectory, s", "{:.2f}"),
            ("sampled", "policy sampled tokens", "{:.0f}"), ("tokens_per_s", "policy tokens/s", "{:.1f}"),
            ("policy_turns", "policy turns / trajectory", "{:.2f}"), ("user_turns", "user turns / trajectory", "{:.2f}"),
            ("user_tokens", "user tokens / trajectory", "{:.1f}"), ("tool_calls", "tool calls / trajectory", "{:.2f}")]
    print("| | " + " | ".join(arms) + " |\n|---|" + "---:|" * len(arms))
    for key, label, fmt in keys:
        print(f"| {label} | " + " | ".join(fmt.format(statistics.median(x[key] for x in rows[a])) for a in arms) + " |")
    print("| ended (stop / max_tokens / max_turns), last round | " + " | ".join(
        " / ".join(str(v) for v in rows[a][-1]["ended"].values()) for a in arms) + " |")
    ratio = statistics.median(x["tokens_per_s"] for x in rows["LLM user"]) / statistics.median(
        x["tokens_per_s"] for x in rows["scripted"])
    print(f"\npolicy tokens/s, LLM user / scripted: {ratio:.2f}")


if __name__ == "__main__":
    main()
