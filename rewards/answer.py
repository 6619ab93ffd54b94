"""Answer rewards: exact and numeric match, math equivalence (math-verify), and answer format.

The answer is read from the trajectory's final answer (the last assistant message without tool calls)
by `extract_answer` (rules in its docstring; the reasoning_gym reward uses the same). A trajectory that never gave a final answer scores 0.0 (the model failed); a task
without ground truth raises, since there is nothing to score against.
"""

from __future__ import annotations

import logging
import math
import re

from rlvr.core.contract import Task, Trajectory
from rlvr.rewards.base import Score

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# a line starting "Answer:" / "Final answer:" (markdown ** and _ allowed), or "the answer is ..." anywhere
_ANSWER_LINE = re.compile(r"^[ \t>#*_]*(?:final\s+)?answer\s*[*_]*\s*:[*_]*[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_TOOL_MARKUP = ("<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]")


def extract_answer(text: str | None) -> str | None:
    """The answer part of a final message, by the first rule that applies:
        1. the last <answer>...</answer> block (reasoning-gym's convention)
        2. the last \\boxed{...} (braces balanced)
        3. after the last line starting "Answer:" / "Final answer:": the rest of that line, or when it is
           empty the lines below it up to the next blank line (grids)
        4. the last non-empty line (from its "answer is", if it has one)
    None when the text is empty."""
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
        rest = lines[-1].group(1).strip().strip("*_").strip()
        below = text[lines[-1].end():].strip("\n").split("\n\n")[0].strip()
        if rest or below:
            return rest or below
    last = text.strip().splitlines()[-1].strip()
    said = _ANSWER_IS.findall(last)
    return said[-1].strip() if said else last


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


def extract_number(text: str | None) -> float | None:
    """The last number of the answer part of `text` ("1,234" -> 1234.0), else the last number of the whole
    text (a closing pleasantry after the result); None when there is none."""
    numbers = _NUMBER.findall(extract_answer(text) or "") or _NUMBER.findall(text or "")
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
