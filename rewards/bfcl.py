"""BFCL's own checkers as rewards: the multi-turn state/response checker and the single-turn AST checker.

`bfcl_multi_turn` re-executes the trajectory's recorded calls (the env's `final_state()["calls"]`, per
turn and per step) and the ground truth on fresh API instances with BFCL's `multi_turn_checker`: after
each turn with ground truth the instances' states must match and the ground truth's results must appear
among the model's. `bfcl_ast` runs BFCL's `ast_checker` on the trajectory's calls against the possible
answers (irrelevance categories: valid when no call is made; live_relevance: when one is).
Both return 1.0 (valid) or 0.0, with fixed 0/1 components naming the kind of failure.

BFCL's checkers import `bfcl_eval.constants.model_config`, which imports every vendor SDK; a stub that
knows only this framework's model name is put in its place (`install_model_config_stub`) unless the real
module is already loaded. The model name says that dots in function names became underscores.
"""

from __future__ import annotations

import copy
import functools
import re
import sys
import types
import uuid
from typing import Any

from rlvr.core.contract import Task, ToolCallError, Trajectory
from rlvr.envs.bfcl import (NO_GROUND_TRUTH, import_bfcl, is_multi_turn, method_parameters, parse_call)
from rlvr.rewards.base import Score

MODEL_NAME = "rlvr"  # what the checkers see as the model (no "_": BFCL reads "_" in it as "/")
MULTI_TURN_FAILURES = ("force_terminated", "empty_turn", "state_mismatch", "response_mismatch")
AST_FAILURES = ("unparsed", "wrong_count", "wrong_function", "wrong_parameters", "wrong_type", "wrong_value",
                "unmatched_call")


@functools.cache
def install_model_config_stub() -> None:
    """Register MODEL_NAME (underscore_to_dot) in BFCL's model config, stubbing the module when not loaded."""
    name = "bfcl_eval.constants.model_config"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name, "Stand-in for BFCL's model registry, installed by rlvr.rewards.bfcl")
        module.MODEL_CONFIG_MAPPING = {}
        sys.modules[name] = module
    module.MODEL_CONFIG_MAPPING.setdefault(MODEL_NAME, types.SimpleNamespace(underscore_to_dot=True))


def _bfcl_info(task: Task, reward: str, multi_turn: bool) -> dict[str, Any]:
    meta = task.metadata
    if "category" not in meta or "id" not in meta:
        raise ValueError(f"{reward}: task {task.id} is not a BFCL task (build it with BfclEnv.tasks)")
    if is_multi_turn(meta["category"]) != multi_turn:
        other = "bfcl_multi_turn" if is_multi_turn(meta["category"]) else "bfcl_ast"
        raise ValueError(f"{reward}: task {task.id} is of category {meta['category']!r}; score it with {other}")
    return meta


def bfcl_score(trajectory: Trajectory, task: Task) -> Score:
    """BFCL's own checker for the task's category: the multi-turn checker or the AST checker."""
    if "category" not in task.metadata:
        raise ValueError(f"bfcl: task {task.id} is not a BFCL task (build it with BfclEnv.tasks)")
    return (bfcl_multi_turn if is_multi_turn(task.metadata["category"]) else bfcl_ast)(trajectory, task)


# --------------------------------------------------------------------------------------------------
# Multi-turn


def bfcl_multi_turn(trajectory: Trajectory, task: Task) -> Score:
    """1.0 when BFCL's multi-turn checker accepts the trajectory's recorded calls (module docstring)."""
    meta = _bfcl_info(task, "bfcl_multi_turn", multi_turn=True)
    state = trajectory.final_state
    if not state or "calls" not in state:
        raise ValueError(f"bfcl_multi_turn: trajectory {trajectory.id} has no final_state['calls'] "
                         "(it was not produced by the bfcl env)")
    ground_truth = task.answer
    calls = state["calls"]
    if len(calls) != len(ground_truth):  # the episode ended before the last user turn (BFCL: force-terminated)
        return _failure("force_terminated", MULTI_TURN_FAILURES)
    _check_call_strings(calls, meta["involved_classes"])
    result = _run_multi_turn_checker(calls, ground_truth, meta)
    if result["valid"]:
        return Score(total=1.0, components=dict.fromkeys(MULTI_TURN_FAILURES, 0.0))
    kind = {"multi_turn:empty_turn_model_response": "empty_turn",
            "multi_turn:instance_state_mismatch": "state_mismatch",
            "multi_turn:execution_response_mismatch": "response_mismatch"}.get(result.get("error_type"))
    return _failure(kind, MULTI_TURN_FAILURES)


def _check_call_strings(calls: list[list[list[str]]], involved_classes: list[str]) -> None:
    """BFCL's checker eval()s the call strings: allow only calls of the APIs' methods with literal arguments."""
    methods = {name: params for cls in involved_classes for name, params in method_parameters(cls).items()}
    for turn in calls:
        for step in turn:
            for text in step:
                name, _ = parse_call(text, methods)
                if name not in methods:
                    raise ValueError(f"bfcl_multi_turn: recorded call {text!r} names no method of "
                                     f"{', '.join(involved_classes)}")


def _run_multi_turn_checker(calls: list[list[list[str]]], ground_truth: list[list[str]],
                            meta: dict[str, Any]) -> dict[str, Any]:
    install_model_config_stub()
    checker = import_bfcl("bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker")
    executor = import_bfcl("bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils")
    # BFCL keeps each run's API instances in its module globals, named after the model and the entry;
    # a fresh model name per check keeps repeated and concurrent checks of one entry apart
    model_name = f"{MODEL_NAME}{uuid.uuid4().hex}"
    entry = {"id": meta["id"], "initial_config": meta["initial_config"], "involved_classes": meta["involved_classes"]}
    try:
        return checker.multi_turn_checker(copy.deepcopy(calls), copy.deepcopy(ground_truth), entry,
                                          meta["category"], model_name)
    finally:
        for suffix in ("_eval", "_ground_truth_eval"):
            for class_name in meta["involved_classes"]:
                instance = re.sub(r"[-./:]", "_", f"{model_name}{suffix}_{meta['id']}_{class_name}_instance")
                vars(executor).pop(instance, None)


# --------------------------------------------------------------------------------------------------
# Single-turn (AST)


def bfcl_ast(trajectory: Trajectory, task: Task) -> Score:
    """1.0 when BFCL's AST checker accepts the trajectory's calls (module docstring). A call that could
    not be parsed fails the trajectory, as an undecodable answer fails it in BFCL."""
    meta = _bfcl_info(task, "bfcl_ast", multi_turn=False)
    calls = trajectory.tool_calls
    unparsed = any(c.error == ToolCallError.parse or c.name is None for c in calls)
    category = meta["category"]
    if category in NO_GROUND_TRUTH:
        made_call = bool(calls) and not unparsed  # BFCL: an undecodable answer counts as no call
        valid = made_call if category == "live_relevance" else not made_call
        return Score(total=float(valid), components={"made_call": float(made_call)})
    if unparsed:
        return _failure("unparsed", AST_FAILURES)
    install_model_config_stub()
    checker = import_bfcl("bfcl_eval.eval_checker.ast_eval.ast_checker")
    language = import_bfcl("bfcl_eval.constants.enums").Language.PYTHON
    output = [{c.name: copy.deepcopy(c.arguments)} for c in calls]
    result = checker.ast_checker(copy.deepcopy(meta["functions"]), output, copy.deepcopy(task.answer), language,
                                 category, MODEL_NAME)
    if result["valid"]:
        return Score(total=1.0, components=dict.fromkeys(AST_FAILURES, 0.0))
    return _failure(_ast_failure_kind(result.get("error_type", "")), AST_FAILURES)


def _ast_failure_kind(error_type: str) -> str | None:
    """BFCL's AST error type (e.g. "simple_function_checker:missing_required") as one of AST_FAILURES."""
    if error_type.endswith("wrong_count"):
        return "wrong_count"
    if error_type.endswith("wrong_func_name"):
        return "wrong_function"
    if error_type.endswith("cannot_find_match"):  # parallel: some expected call has no matching call
        return "unmatched_call"
    if error_type.endswith(("missing_required", "unexpected_param", "missing_optional")):
        return "wrong_parameters"
    if error_type.startswith("type_error"):
        return "wrong_type"
    if error_type.startswith("value_error"):
        return "wrong_value"
    return None


def _failure(kind: str | None, kinds: tuple[str, ...]) -> Score:
    return Score(total=0.0, components={k: float(k == kind) for k in kinds})
