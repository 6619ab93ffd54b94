"""The reasoning-gym reward: the dataset's own scorer (`score_answer(answer, entry)`) on the final answer.

The answer is read from the trajectory's final answer by rlvr.rewards.answer.extract_answer (the last
<answer>...</answer>, else the last \\boxed{}, else after the last "Answer:" line, else the last line).
A trajectory without a final answer scores 0.0 (the model failed). The total is the dataset's score
as reasoning-gym defines it, partial credit included (e.g. gsm_symbolic gives 0.01 for a wrong number);
the "solved" component is 1.0 only for a full score, and `strict=True` makes that the total. A scorer
that raises (some do on malformed text) raises here too, so it goes through `rewards.on_error` like
every reward: the run stops, or the trajectory is dropped and counted; it is never a silent 0.
"""

from __future__ import annotations

import functools
from typing import Callable

from rlvr.core.contract import Task, Trajectory
from rlvr.envs.reasoning_gym import decode_entry, import_reasoning_gym
from rlvr.rewards.answer import extract_answer
from rlvr.rewards.base import Score

@functools.cache
def _scorer(dataset: str) -> Callable[[str | None, dict], float]:
    """The dataset's `score_answer` (built once per dataset: building some loads data files)."""
    return import_reasoning_gym().get_score_answer_fn(dataset)


def reasoning_gym_score(trajectory: Trajectory, task: Task, strict: bool = False) -> Score:
    """The dataset's score of the extracted final answer (see the module docstring)."""
    entry = task.metadata.get("entry")
    dataset = task.metadata.get("dataset")
    if entry is None or not dataset:
        raise ValueError(f"reasoning_gym: task {task.id} has no metadata['entry'] and ['dataset'] "
                         "(build tasks with ReasoningGymEnv.tasks)")
    answer = extract_answer(trajectory.final_answer)
    if answer is None:
        return Score(total=0.0, components={"solved": 0.0})
    score = float(_scorer(dataset)(answer, decode_entry(entry)))  # raises: rewards.on_error decides
    solved = float(score >= 1.0)
    return Score(total=solved if strict else score, components={"solved": solved})
