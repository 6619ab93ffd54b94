"""Reward throughput: scored trajectories per second through the Scorer for a batch of 1,024.

    python bench/rewards.py

1. a 50 ms async reward (an LLM judge or a remote test runner): goal > 500 trajectories/s, which
   needs the rewards to run concurrently (one at a time would be 20/s);
2. a 50 ms sync reward (blocking Python), which runs in the scorer's thread pool;
3. the calculator env's built-in rewards (numeric_answer, format, tool_call_validity) together.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from rlvr.core.contract import Task, ToolCall, Trajectory
from rlvr.rewards.scoring import RewardTerm, Scorer


async def judge_50ms(trajectory: Trajectory, task: Task) -> float:
    await asyncio.sleep(0.05)
    return 1.0


def blocking_50ms(trajectory: Trajectory, task: Task) -> float:
    time.sleep(0.05)
    return 1.0


def batch(n: int) -> list[tuple[Trajectory, Task]]:
    task = Task(id="t", env="calculator", prompt="What is 1234 * 7?", answer=8638)
    call = ToolCall(name="calculate", arguments={"expression": "1234 * 7"}, result="8638", span=(0, 4))
    return [(Trajectory(id=f"t/{i}", task_id="t", group_id="t", prompt_ids=[1], completion_ids=[2] * 8,
                        loss_mask=[1] * 8, logprobs=[0.0] * 8, tool_calls=[call.model_copy()],
                        final_answer="The answer is 8,638."), task) for i in range(n)]


def measure(scorer: Scorer, n: int) -> float:
    items = batch(n)

    async def run():
        await asyncio.gather(*(scorer.score(t, task) for t, task in items))

    start = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - start
    assert all(t.reward is not None for t, _ in items)
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=1024)
    args = parser.parse_args()
    n = args.trajectories
    cases = {
        "async reward, 50 ms each": Scorer([RewardTerm("judge", judge_50ms)]),
        "sync reward, 50 ms each (thread pool)": Scorer([RewardTerm("blocking", blocking_50ms)]),
        "calculator built-ins (numeric_answer + format + validity)":
            Scorer.from_specs({"numeric_answer": 1.0, "format": 0.0, "tool_call_validity": 0.0}),
    }
    print(f"{n} trajectories per batch")
    for label, scorer in cases.items():
        print(f"{label:60s} {measure(scorer, n):10.1f} trajectories/s")


if __name__ == "__main__":
    main()
