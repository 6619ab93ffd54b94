"""Synthetic scored groups: real contract objects with random tokens, for the smoke run and benchmarks.

They have the shape of agent trajectories (a shared prompt per group, sampled turns separated by masked
tool-result tokens, tool calls with token spans and credit, binary rewards) but no meaning: they
exercise the learner's mechanics and speed, not what it learns.
"""

from __future__ import annotations

import random

from rlvr.core.contract import Group, Task, ToolCall, Trajectory


def synthetic_groups(num_groups: int, group_size: int, prompt_tokens: int, completion_tokens: int,
                     vocab_size: int, *, turns: int = 1, seed: int = 0) -> list[Group]:
    """`num_groups` groups of `group_size` trajectories. Completion lengths vary in [1/2, 1] x
    `completion_tokens`; with `turns` > 1 each turn but the last ends in a tool call whose result (a
    quarter of the turn's length) is masked out of the loss."""
    rng = random.Random(seed)
    groups = []
    for g in range(num_groups):
        task = Task(id=f"synthetic-{seed}-{g}", env="synthetic", prompt="(synthetic)")
        prompt = [rng.randrange(vocab_size) for _ in range(prompt_tokens)]
        trajectories = []
        for k in range(group_size):
            ids, mask, calls = [], [], []
            per_turn = max(2, rng.randint(completion_tokens // 2, completion_tokens) // turns)
            for turn in range(turns):
                sampled = per_turn
                ids += [rng.randrange(vocab_size) for _ in range(sampled)]
                mask += [1] * sampled
                if turn < turns - 1:
                    call_len = max(1, sampled // 3)
                    calls.append(ToolCall(name="tool", raw="(synthetic)", span=(len(ids) - call_len, len(ids)),
                                          result="(synthetic)", credit=float(rng.random() < 0.5)))
                    result = max(1, sampled // 4)
                    ids += [rng.randrange(vocab_size) for _ in range(result)]
                    mask += [0] * result
            trajectories.append(Trajectory(
                id=f"{task.id}-{k}", task_id=task.id, group_id=task.id, prompt_ids=prompt, completion_ids=ids,
                loss_mask=mask, logprobs=[-rng.uniform(0.0, 3.0) * m for m in mask], tool_calls=calls,
                turns=turns, reward=float(rng.random() < 0.5)))
        groups.append(Group(id=task.id, task=task, trajectories=trajectories))
    return groups
