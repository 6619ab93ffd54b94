"""BFCL v4 (the Berkeley Function Calling Leaderboard) as an environment, from the `bfcl-eval` package's data.

Two kinds of category:

- multi-turn (`multi_turn_base`, `multi_turn_miss_param`, `multi_turn_long_context`): the env loads BFCL's
  own stateful mock APIs (file system, trading bot, travel booking...) with the entry's initial config
  and executes the model's calls on them the way BFCL's checker does (keyword arguments, a dict result
  as JSON, anything else with str(), a raised exception as "Error during execution: ..."). When the model
  answers without calling a tool, `next_messages` brings the user's next turn, until the turns run out.
  `final_state()` holds the executed calls as BFCL call strings per turn and per step (the
  `multi_turn_model_result_list_decoded` its multi-turn checker takes) and the APIs' public state.
- single-turn (`simple_python` alias `simple`, `multiple`, `parallel`, `parallel_multiple`, their `live_`
  versions, `irrelevance`, `live_irrelevance`, `live_relevance`): no backend; the first tool turn is
  recorded and ends the episode, and the AST checker judges the calls (rlvr.rewards.bfcl:bfcl_ast).

Function docs become OpenAI-style tool schemas as BFCL compiles them for function-calling models: the
Python-syntax hint appended to each description, BFCL types mapped to JSON schema ("dict" -> "object",
"float" -> "number" with a note, unknown -> "string"), dots in names replaced by underscores.
`Task.answer` holds BFCL's ground truth: the possible answers (single-turn) or the call strings of each
turn (multi-turn); `Task.gold_calls` the same as {"turn", "name", "arguments"} dicts.

Out of scope: `multi_turn_miss_func` (its held-out functions join the tool list mid-conversation, and the
tool list is fixed at reset here), the Java and JavaScript categories, web search and memory (agentic).

The package is imported lazily, so listing envs stays cheap; a missing package fails with the pip command.
"""

from __future__ import annotations

import ast
import copy
import datetime
import functools
import hashlib
import importlib
import inspect
import json
import math
import random
import zlib
from pathlib import Path
from typing import Any

from rlvr.core.contract import Message, Task, ToolCall, ToolCallError
from rlvr.envs.base import StepResult, ToolEnv, run_tool, schema_problem

INSTALL_HINT = "pip install bfcl-eval"
MULTI_TURN_CATEGORIES = ("multi_turn_base", "multi_turn_miss_param", "multi_turn_long_context")
SINGLE_TURN_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple",
                          "live_multiple", "live_parallel", "live_parallel_multiple", "irrelevance",
                          "live_irrelevance", "live_relevance")
CATEGORY_ALIASES = {"simple": "simple_python"}
NO_GROUND_TRUTH = ("irrelevance", "live_irrelevance", "live_relevance")  # judged by whether a call is made
PYTHON_HINT = " Note that the provided function is in Python 3 syntax."  # what BFCL appends to every doc
TEST_SHARE = 5  # one entry in TEST_SHARE, chosen by a hash of its id, is held out as the "test" split
SINGLE_TURN_RESULT = "recorded"  # what a single-turn call answers: there is no backend to run it on

def import_bfcl(module: str = "bfcl_eval") -> Any:
    """Import a bfcl_eval module; a missing package fails with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "bfcl_eval":
            raise ModuleNotFoundError(f"the bfcl env and rewards need the bfcl-eval package: {INSTALL_HINT}") from e
        raise


def canonical_category(category: str) -> str:
    """The BFCL v4 file name of a category; unsupported categories fail saying why."""
    category = CATEGORY_ALIASES.get(category, category)
    if category == "multi_turn_miss_func":
        raise ValueError("bfcl category 'multi_turn_miss_func' is not supported: its held-out functions join "
                         "the tool list mid-conversation, and an env's tools are fixed at reset")
    if category not in MULTI_TURN_CATEGORIES + SINGLE_TURN_CATEGORIES:
        raise ValueError(f"unknown or unsupported bfcl category {category!r}; choose one of "
                         f"{', '.join(MULTI_TURN_CATEGORIES + SINGLE_TURN_CATEGORIES)} (or 'simple')")
    return category


def is_multi_turn(category: str) -> bool:
    return category.startswith("multi_turn")


# --------------------------------------------------------------------------------------------------
# Data


def _data_dir() -> Path:
    return Path(import_bfcl().__file__).parent / "data"


@functools.cache
def _read_jsonl(path: Path) -> tuple[dict[str, Any], ...]:
    with open(path) as f:
        return tuple(json.loads(line) for line in f if line.strip())


def load_entries(category: str) -> list[dict[str, Any]]:
    """The category's entries (copies), each with its "ground_truth" (None for the relevance categories)
    and, for multi-turn entries, its "function" docs (those of its involved classes)."""
    category = canonical_category(category)
    data = _data_dir()
    entries = copy.deepcopy(list(_read_jsonl(data / f"BFCL_v4_{category}.json")))
    truths = {} if category in NO_GROUND_TRUTH else {
        a["id"]: a["ground_truth"] for a in _read_jsonl(data / "possible_answer" / f"BFCL_v4_{category}.json")}
    for entry in entries:
        if category not in NO_GROUND_TRUTH and entry["id"] not in truths:
            raise ValueError(f"bfcl {category}: entry {entry['id']} has no possible answer")
        entry["ground_truth"] = copy.deepcopy(truths.get(entry["id"]))
        if is_multi_turn(category):
            entry["function"] = [doc for name in entry["involved_classes"] for doc in _class_docs(name)]
    return entries


def _class_docs(class_name: str) -> list[dict[str, Any]]:
    mapping = import_bfcl("bfcl_eval.constants.executable_backend_config").MULTI_TURN_FUNC_DOC_FILE_MAPPING
    return copy.deepcopy(list(_read_jsonl(_data_dir() / "multi_turn_func_doc" / mapping[class_name])))


def in_split(entry_id: str, split: str) -> bool:
    """The fixed train/test partition: an entry is "test" when the crc32 of its id is 0 mod TEST_SHARE."""
    if split == "all":
        return True
    if split not in ("train", "test"):
        raise ValueError(f"bfcl split must be 'train', 'test' or 'all', got {split!r}")
    return (zlib.crc32(entry_id.encode()) % TEST_SHARE == 0) == (split == "test")


# --------------------------------------------------------------------------------------------------
# Tool schemas


def tool_schema(function: dict[str, Any]) -> dict[str, Any]:
    """A BFCL function doc as an OpenAI-style tool schema (see the module docstring)."""
    parameters = copy.deepcopy(function.get("parameters") or {"type": "dict", "properties": {}})
    parameters = _json_schema(parameters)
    parameters["type"] = "object"
    parameters.setdefault("properties", {})
    return {"type": "function", "function": {
        "name": tool_name(function["name"]),
        "description": function.get("description", "") + PYTHON_HINT,
        "parameters": parameters,
    }}


def tool_name(bfcl_name: str) -> str:
    """BFCL's name for function-calling models: tool names may not contain dots."""
    return bfcl_name.replace(".", "_")


def _json_schema(node: dict[str, Any]) -> dict[str, Any]:
    json_types = import_bfcl("bfcl_eval.constants.type_mappings").GORILLA_TO_OPENAPI
    declared = node.get("type")
    if declared in ("any", "Any"):  # no type constraint (BFCL maps it to "string" for OpenAI models)
        node.pop("type")
    else:
        node["type"] = json_types.get(declared, "string") if isinstance(declared, str) else "string"
    if declared == "float":
        node["format"] = "float"
        node["description"] = node.get("description", "") + " This is a float type value."
    for key, value in node.get("properties", {}).items():
        node["properties"][key] = _json_schema(value)
    if isinstance(node.get("items"), dict):
        node["items"] = _json_schema(node["items"])
    return node


# --------------------------------------------------------------------------------------------------
# Calls as BFCL writes them: "name(key=repr(value),...)"


def format_call(name: str, arguments: dict[str, Any]) -> str:
    """A call in the string form BFCL's decoders produce and its multi-turn checker evaluates."""
    return f"{name}({','.join(f'{key}={value!r}' for key, value in arguments.items())})"


def parse_call(text: str, parameter_names: dict[str, list[str]] | None = None) -> tuple[str, dict[str, Any]]:
    """(name, arguments) of a call string whose arguments are literals; positional arguments are named
    from `parameter_names[name]` (a method's parameters in order). Raises ValueError on anything else."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            raise ValueError("not a call of a plain name")
        if any(k.arg is None for k in node.keywords):
            raise ValueError("** arguments are not supported")
        arguments = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        if node.args:
            names = (parameter_names or {}).get(node.func.id)
            if names is None or len(node.args) > len(names):
                raise ValueError(f"cannot name the positional arguments of {node.func.id}")
            arguments = {**dict(zip(names, (ast.literal_eval(a) for a in node.args))), **arguments}
    except (SyntaxError, ValueError, TypeError) as e:
        raise ValueError(f"not a BFCL call string {text!r}: {e}") from None
    return node.func.id, arguments


def _bad_argument(arguments: dict[str, Any]) -> str | None:
    """Why arguments cannot be written as a BFCL call string (whose values must read back as the same)."""
    for key, value in arguments.items():
        if not key.isidentifier():
            return f"argument name {key!r} is not an identifier"
        if _has_non_finite(value):
            return f"argument {key} holds a non-finite number"
    return None


def _signature_problem(method: Any, arguments: dict[str, Any]) -> str | None:
    """Why the arguments do not fit the method's parameters (unknown or missing ones), else None."""
    try:
        inspect.signature(method).bind(**arguments)
    except TypeError as e:
        return str(e)
    return None


def _with_mutable_defaults(method: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments with omitted list/dict defaults written out. BFCL's post_tweet shares its default
    `mentions` list across calls and instances and mention() extends it, so a call leaning on it would
    see (and leave) other episodes' mentions; written out, each execution gets its own list."""
    return {**arguments, **{name: copy.deepcopy(p.default) for name, p in inspect.signature(method).parameters.items()
                            if name not in arguments and isinstance(p.default, (list, dict, set))}}


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


# --------------------------------------------------------------------------------------------------
# BFCL's mock APIs


def api_class(class_name: str) -> type:
    backend = import_bfcl("bfcl_eval.constants.executable_backend_config")
    return getattr(import_bfcl(backend.CLASS_FILE_PATH_MAPPING[class_name]), class_name)


def load_instances(involved_classes: list[str], initial_config: dict[str, Any],
                   long_context: bool) -> dict[str, Any]:
    """Fresh instances of the involved API classes loaded with their initial config, as BFCL's
    `execute_multi_turn_func_call` makes them."""
    stateless = import_bfcl("bfcl_eval.constants.executable_backend_config").STATELESS_CLASSES
    instances = {}
    for class_name in involved_classes:
        instance = api_class(class_name)()
        if class_name not in stateless:
            instance._load_scenario(copy.deepcopy(initial_config.get(class_name, {})), long_context=long_context)
        instances[class_name] = instance
    return instances


def public_methods(instances: dict[str, Any]) -> dict[str, Any]:
    """Method name -> bound method over all instances (a later class wins a clash, as in BFCL)."""
    methods = {}
    for instance in instances.values():
        for name, method in inspect.getmembers(instance, predicate=inspect.ismethod):
            if not name.startswith("_"):
                methods[name] = method
    return methods


@functools.cache
def method_parameters(class_name: str) -> dict[str, list[str]]:
    """Each public method's parameter names in order (to name the positional arguments of gold calls)."""
    cls = api_class(class_name)
    return {name: [p for p in inspect.signature(fn).parameters if p != "self"]
            for name, fn in inspect.getmembers(cls, predicate=inspect.isfunction) if not name.startswith("_")}


def result_text(value: Any) -> str:
    """A call's result as BFCL's executor renders it: strings as they are, dicts as JSON, else str()."""
    if type(value) is str:
        return value
    if type(value) is dict:
        try:
            return json.dumps(value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def public_state(instance: Any) -> dict[str, Any]:
    """The public attributes of an API instance (what BFCL's state checker compares) as JSON values."""
    return _jsonable(instance, set(), private=False)


def _jsonable(value: Any, path: set[int], private: bool) -> Any:
    """JSON values for nested API state: objects become their attributes (public ones only unless
    `private`), and a back-reference to an object on the current path (a directory's parent) its class
    name. With `private`, random generators become a digest of their state and datetimes (wall-clock
    stamps such as a file's last change) are left out, so equal histories give equal values."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if private and isinstance(value, random.Random):
        return hashlib.sha1(repr(value.getstate()).encode()).hexdigest()
    if private and isinstance(value, datetime.datetime):
        return None
    if id(value) in path:
        return f"<{type(value).__name__}>"
    path = path | {id(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v, path, private) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, path, private) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v, path, private) for v in value), key=repr)
    if hasattr(value, "__dict__"):
        return {"__class__": type(value).__name__,
                **{k: _jsonable(v, path, private) for k, v in sorted(vars(value).items())
                   if private or not k.startswith("_")}}
    return str(value)


# --------------------------------------------------------------------------------------------------
# Tasks


def bfcl_tasks(n: int, seed: int = 0, split: str = "train", category: str = "multi_turn_base") -> list[Task]:
    """`n` entries of a category's split, a sample deterministic in `seed` (in a seeded order)."""
    category = canonical_category(category)
    pool = _pool(category, split)
    if n > len(pool):
        raise ValueError(f"bfcl {category} has {len(pool)} entries in split {split!r}, asked for {n}")
    chosen = random.Random(f"bfcl-{category}-{split}-{seed}").sample(pool, n)
    return [entry_task(entry, category) for entry in chosen]


def entry_count(category: str, split: str = "all") -> int:
    """How many entries `bfcl_tasks` can draw from a category's split."""
    return len(_pool(canonical_category(category), split))


def _pool(category: str, split: str) -> list[dict[str, Any]]:
    excluded = _schema_breaking_entries(category)
    return [e for e in load_entries(category) if in_split(e["id"], split) and e["id"] not in excluded]


@functools.cache
def _schema_breaking_entries(category: str) -> frozenset[str]:
    """Ids of the few multi-turn entries whose ground truth breaks its own tools' schemas (e.g.
    multi_turn_base_173 closes ticket "ticket_001" where ticket_id is an integer): the env refuses such
    calls, so no policy could match that ground truth. The task source leaves them out."""
    if not is_multi_turn(category):
        return frozenset()
    breaking = set()
    for entry in load_entries(category):
        task = entry_task(entry, category)
        parameters = {t["function"]["name"]: t["function"]["parameters"] for t in task.tools or []}
        if any(g["name"] not in parameters or schema_problem(parameters[g["name"]], g["arguments"])
               for g in task.gold_calls or []):
            breaking.add(entry["id"])
    return frozenset(breaking)


def entry_task(entry: dict[str, Any], category: str) -> Task:
    """A BFCL entry (with its "ground_truth") as a Task; see the module docstring for the fields."""
    functions = entry["function"]
    metadata: dict[str, Any] = {"id": entry["id"], "category": category}
    if is_multi_turn(category):
        parameter_names = {name: params for cls in entry["involved_classes"]
                           for name, params in method_parameters(cls).items()}
        gold = [{"turn": turn, "name": name, "arguments": arguments}
                for turn, calls in enumerate(entry["ground_truth"])
                for name, arguments in (parse_call(c, parameter_names) for c in calls)]
        metadata.update(turns=entry["question"][1:], initial_config=entry["initial_config"],
                        involved_classes=entry["involved_classes"])
    else:
        properties = {f["name"]: f.get("parameters", {}).get("properties", {}) for f in functions}
        gold = [{"turn": 0, "name": tool_name(name), "arguments": _first_options(options, properties.get(name, {}))}
                for call in entry["ground_truth"] or [] for name, options in call.items()]
        metadata["functions"] = functions  # BFCL's own docs: what the AST checker reads types from
    return Task(id=f"bfcl-{entry['id']}", env="bfcl", prompt=entry["question"][0], answer=entry["ground_truth"],
                gold_calls=gold, tools=[tool_schema(f) for f in functions], metadata=metadata)


def _first_options(options: dict[str, list[Any]], properties: dict[str, Any] | None) -> dict[str, Any]:
    """One concrete set of arguments from a possible answer: each parameter's first option other than ""
    (BFCL's "may be left out"), parameters with no such option left out, and so are those the function's
    doc (`properties`; None inside a dict) does not declare when they may be. Where the doc declares a
    dict or a list of dicts, an option's dicts hold options per key in turn (as BFCL's dict checkers read them)."""
    arguments = {}
    for param, choices in options.items():
        given = [c for c in choices if c != ""]
        if not given or (properties is not None and param not in properties and "" in choices):
            continue
        value, declared = given[0], (properties or {}).get(param, {})
        if declared.get("type") == "dict" and isinstance(value, dict):
            value = _first_options(value, None)
        elif (declared.get("type") == "array" and declared.get("items", {}).get("type") == "dict"
              and isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            value = [_first_options(v, None) for v in value]
        arguments[param] = value
    return arguments


# --------------------------------------------------------------------------------------------------
# The environment


class BfclEnv(ToolEnv):
    """A BFCL v4 entry: multi-turn against BFCL's mock APIs, or one recorded single-turn call set."""

    name = "bfcl"
    rewards = {"bfcl": 1.0, "tool_call_validity": 0.0}  # bfcl: the multi-turn or AST checker, by category

    def __init__(self, task: Task, seed: int = 0, tool_timeout_s: float = 10.0):
        super().__init__(task, seed=seed, tool_timeout_s=tool_timeout_s)
        if "category" not in task.metadata or task.tools is None:
            raise ValueError(f"bfcl: task {task.id} was not built by BfclEnv.tasks (no category or tools)")
        self.category = task.metadata["category"]
        self.multi_turn = is_multi_turn(self.category)
        self.turn = 0
        self.calls: list[list[list[str]]] = [[]]  # per turn, per step: the executed calls as BFCL strings
        self._stepped = False
        self._parameters = {schema["function"]["name"]: schema["function"]["parameters"] for schema in task.tools}
        self._names = set(self._parameters)
        if self.multi_turn:
            meta = task.metadata
            self.instances = load_instances(meta["involved_classes"], meta["initial_config"],
                                            long_context="long_context" in self.category)
            self._methods = public_methods(self.instances)

    @classmethod
    def tasks(cls, n: int, seed: int = 0, split: str = "train", category: str = "multi_turn_base") -> list[Task]:
        """`n` entries of a BFCL category (see `bfcl_tasks`)."""
        return bfcl_tasks(n, seed, split, category)

    @property
    def tool_names(self) -> set[str]:
        return set(self._names)

    async def step(self, calls: list[ToolCall]) -> StepResult:
        """Multi-turn: run the calls one after another on the APIs (each bounded by the timeout) and
        record those that ran (list defaults written out, see `_with_mutable_defaults`) as one step of the
        current turn; unknown tools and arguments that do not
        fit the method (or have no call-string form) are refused unrecorded, so the checker never sees
        them (for BFCL they are errors that change nothing). Single-turn: record them; the episode ends."""
        anchor = self.state_key()
        executed = []
        for call in calls:
            call.anchor = anchor
            if call.error is not None:  # a parse error: nothing to run
                continue
            if call.name not in self._names:
                call.error = ToolCallError.unknown_tool
                call.result = f"unknown tool {call.name!r}; available tools: {', '.join(sorted(self._names))}"
                continue
            problem = (schema_problem(self._parameters[call.name], call.arguments) or _bad_argument(call.arguments)
                       or (self.multi_turn and _signature_problem(self._methods[call.name], call.arguments)))
            if problem:
                call.error, call.result = ToolCallError.bad_arguments, f"bad arguments for {call.name}: {problem}"
                continue
            arguments = (_with_mutable_defaults(self._methods[call.name], call.arguments) if self.multi_turn
                         else call.arguments)
            text = format_call(call.name, arguments)
            if self.multi_turn:
                await self._run(call, arguments)
                if call.error == ToolCallError.timeout:
                    continue  # not recorded: the checker would hang on it in turn
            else:
                call.result = SINGLE_TURN_RESULT
            executed.append(text)
        if executed:  # BFCL drops steps that decode to no call
            self.calls[self.turn].append(executed)
        self._stepped = True
        return StepResult(calls=calls, done=self.done)

    async def _run(self, call: ToolCall, arguments: dict[str, Any]) -> None:
        method = self._methods[call.name]
        # the APIs keep and later change list arguments (a tweet's mentions): give them their own copy,
        # as BFCL's executor does by evaluating the call string afresh
        arguments = copy.deepcopy(arguments)
        # BFCL's executor turns any exception into this result
        await run_tool(call, lambda: result_text(method(**arguments)), self.tool_timeout_s,
                       lambda _, e: f"Error during execution: {e}")

    @property
    def done(self) -> bool:
        return not self.multi_turn and self._stepped

    def next_messages(self, answer: str) -> list[Message]:
        """The user's next turn after a final answer (multi-turn), [] once the turns run out."""
        remaining = self.task.metadata.get("turns", []) if self.multi_turn else []
        if self.turn >= len(remaining):
            return []
        messages = copy.deepcopy(remaining[self.turn])
        self.turn += 1
        self.calls.append([])
        return messages

    def final_state(self) -> dict[str, Any]:
        """{"category", "calls": per turn, per step, the executed calls as BFCL strings, and for
        multi-turn "state": each API instance's public attributes}."""
        state: dict[str, Any] = {"category": self.category, "calls": copy.deepcopy(self.calls)}
        if self.multi_turn:
            state["state"] = {name: public_state(instance) for name, instance in self.instances.items()}
        return state

    def state_key(self) -> str:
        """The current user turn and the APIs' whole state, private attributes included (a file system's
        current directory is private to BFCL's checker but decides what the next call does)."""
        state = ({name: _jsonable(i, set(), private=True) for name, i in self.instances.items()}
                 if self.multi_turn else self.calls)
        text = json.dumps({"turn": self.turn, "state": state}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]
