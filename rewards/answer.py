"""Answer rewards: exact and numeric match, math equivalence (math-verify), and answer format.

The answer is read from the trajectory's final answer (the last assistant message without tool calls)
by `extract_answer`: the last \\boxed{...} if any, else the text after the last "answer:" / "answer is",
else the whole text. A trajectory that never gave a final answer scores 0.0 (the model failed); a task
without ground truth raises, since there is nothing to score against.
"""

from __future__ import annotations

import logging
import math
import re

from rlvr.contract import Task, Trajectory
from rlvr.rewards.base import Score

_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*(.+)", re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_TOOL_MARKUP = ("<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]")


def extract_answer(text: str | None) -> str | None:
    """The answer part of a final message (see the module docstring); None when there is none."""
    if not text or not text.strip():
        return None
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    said = _ANSWER_IS.findall(text)
    answer = said[-1] if said else text
    return answer.strip().splitlines()[0].strip() if answer.strip() else None


def extract_number(text: str | None) -> float | None:
    """The last number in the answer part of `text` ("1,234" -> 1234.0); None when there is none."""
    answer = extract_answer(text)
    numbers = _NUMBER.findall(answer or "")
    return float(numbers[-1].replace(",", "")) if numbers else None


def _normalise(text: str) -> str:
    return " ".join(text.strip().rstrip(".").casefold().split())


def _ground_truth(task: Task, reward: str):
    if task.answer is None:
        raise ValueError(f"{reward}: task {task.id} has no ground-truth answer (Task.answer is None)")
    return task.answer


def exact_answer(trajectory: Trajectory, task: Task) -> float:
    """1.0 when the extracted answer equals the task's answer (case, spacing and a final period ignored)."""
    gold = _ground_truth(task, "exact_answer")
    answer = extract_answer(trajectory.final_answer)
    return float(answer is not None and _normalise(answer) == _normalise(str(gold)))


def numeric_answer(trajectory: Trajectory, task: Task, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> float:
    """1.0 when the last number of the answer equals the task's numeric answer within tolerance."""
    gold = _ground_truth(task, "numeric_answer")
    try:
        target = float(str(gold).replace(",", ""))
    except ValueError:
        raise ValueError(f"numeric_answer: task {task.id} answer {gold!r} is not a number") from None
    value = extract_number(trajectory.final_answer)
    return float(value is not None and math.isclose(value, target, rel_tol=rel_tol, abs_tol=abs_tol))


def math_equivalence(trajectory: Trajectory, task: Task) -> float:
    """1.0 when math-verify finds the answer equivalent to the task's answer (LaTeX, fractions, sets...).

    math-verify's own timeouts use SIGALRM, which only works in the main thread; rewards run in worker
    threads, so they are off here and the scorer's per-reward timeout bounds the call instead."""
    from math_verify import parse, verify

    gold = _ground_truth(task, "math_verify")
    if not trajectory.final_answer:
        return 0.0
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every call with timeouts off
    gold_text = str(gold) if "$" in str(gold) or "\\boxed" in str(gold) else f"${gold}$"  # math-verify reads LaTeX in $..$
    return float(verify(parse(gold_text, parsing_timeout=None), parse(trajectory.final_answer, parsing_timeout=None),
                        timeout_seconds=None))


def answer_format(trajectory: Trajectory, task: Task) -> Score:
    """The final answer is present and well-formed: the episode stopped on its own with a non-empty
    answer, no tool-call markup is left in it, and (when the task's answer is a number) it has a number."""
    answer = extract_answer(trajectory.final_answer)
    present = trajectory.finish_reason == "stop" and answer is not None
    clean = not any(mark in (trajectory.final_answer or "") for mark in _TOOL_MARKUP)
    needs_number = isinstance(task.answer, (int, float)) and not isinstance(task.answer, bool)
    has_number = not needs_number or extract_number(trajectory.final_answer) is not None
    parts = {"present": float(present), "no_tool_markup": float(clean), "number": float(has_number)}
    return Score(total=float(present and clean and has_number), components=parts)
