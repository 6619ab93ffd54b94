"""The reasoning-gym reward: the dataset's own scorer (`score_answer(answer, entry)`) on the final answer.

The answer is read from the trajectory's final answer (`extract_final_answer`), first rule that applies:
    1. the last <answer>...</answer> block (reasoning-gym's own convention)
    2. the last \\boxed{...} (braces balanced)
    3. after the last line that starts with "Answer:" or "Final answer:" (any case, markdown ** allowed):
       the rest of that line, or when it is empty the lines below it up to the next blank line (grids)
    4. the last non-empty line
A trajectory without a final answer scores 0.0 (the model failed). The total is the dataset's score
as reasoning-gym defines it, partial credit included (e.g. gsm_symbolic gives 0.01 for a wrong number);
the "solved" component is 1.0 only for a full score, and `strict=True` makes that the total. A scorer
that raises on the answer (some do on malformed text) scores 0.0 with the "scorer_raised" component set.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

from rlvr.contract import Task, Trajectory
from rlvr.envs.reasoning_gym import decode_entry, import_reasoning_gym
from rlvr.rewards.base import Score

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_LINE = re.compile(r"^[ \t>#*_]*(?:final\s+)?answer\s*[*_]*\s*:[*_]*[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)


def extract_final_answer(text: str | None) -> str | None:
    """The answer part of a final message (rules in the module docstring); None when there is none."""
    if not text or not text.strip():
        return None
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        return tagged[-1].strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    lines = list(_ANSWER_LINE.finditer(text))
    if lines:
        last = lines[-1]
        rest = last.group(1).strip().strip("*_").strip()
        if rest:
            return rest
        below = text[last.end():].strip("\n").split("\n\n")[0].strip()
        if below:
            return below
    return text.strip().splitlines()[-1].strip()


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i]
            depth -= 1
    return None  # unbalanced: left to the other rules


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
    answer = extract_final_answer(trajectory.final_answer)
    if answer is None:
        return Score(total=0.0, components={"solved": 0.0, "scorer_raised": 0.0})
    try:
        score = float(_scorer(dataset)(answer, decode_entry(entry)))
    except Exception:  # the scorer choked on the model's text: a wrong answer, visible in the component
        return Score(total=0.0, components={"solved": 0.0, "scorer_raised": 1.0})
    solved = float(score >= 1.0)
    return Score(total=solved if strict else score, components={"solved": solved, "scorer_raised": 0.0})
