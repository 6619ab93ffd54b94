"""Environment throughput: tool calls per second through `step` with 64 concurrent trajectories.

    python bench/envs.py                         # calculator, python, support_desk
    python bench/envs.py --envs sql --trajectories 64 --calls 8

Each trajectory is one env instance on one task; all trajectories step concurrently on one event loop
(as in a rollout), each making `--calls` sequential steps of one call. The calls are the task's gold
calls where it has them (support_desk, sql), else a representative call of the env's tool. Reported:
calls/s over the whole batch, and the median latency of one call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from rlvr.core.contract import Task, ToolCall
from rlvr.envs.registry import load_env

REPRESENTATIVE_CALLS = {
    "calculator": {"name": "calculate", "arguments": {"expression": "(1234 + 56) * 789 - 4321"}},
    "python": {"name": "run_python", "arguments": {"code": "print(sum(i * i for i in range(10_000)))"}},
}


def calls_for(env_name: str, task: Task, count: int) -> list[dict]:
    calls = list(task.gold_calls or []) or [REPRESENTATIVE_CALLS[env_name]]
    return [calls[i % len(calls)] for i in range(count)]


async def trajectory(env_cls, task: Task, calls: list[dict], latencies: list[float]) -> None:
    env = env_cls(task, seed=0, tool_timeout_s=30.0)
    try:
        env.reset()
        for spec in calls:
            call = ToolCall(name=spec["name"], arguments=dict(spec["arguments"]))
            start = time.perf_counter()
            await env.step([call])
            latencies.append(time.perf_counter() - start)
            if call.error is not None and spec is REPRESENTATIVE_CALLS.get(env_cls.name):
                raise RuntimeError(f"{env_cls.name}: the benchmark call failed: {call.result}")
    finally:
        env.close()


def measure(name: str, concurrent: int, calls_each: int) -> tuple[float, float]:
    env_cls = load_env(name)
    tasks = env_cls.tasks(concurrent, seed=0)
    env_cls(tasks[0]).reset()  # warm-up: imports and the per-class tool schemas are one-time costs
    latencies: list[float] = []

    async def run():
        await asyncio.gather(*(trajectory(env_cls, t, calls_for(name, t, calls_each), latencies) for t in tasks))

    start = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["calculator", "python", "support_desk"])
    parser.add_argument("--trajectories", type=int, default=64)
    parser.add_argument("--calls", type=int, default=8, help="sequential steps per trajectory")
    args = parser.parse_args()
    print(f"{args.trajectories} concurrent trajectories x {args.calls} steps of one call")
    for name in args.envs:
        rate, latency = measure(name, args.trajectories, args.calls)
        print(f"{name:14s} {rate:10.1f} calls/s   median call latency {latency * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
