"""The floors of docs/architecture.md hold: import contracts (pyproject.toml), and envs and rewards that
build, step and score without torch, transformers or Ray."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts(tmp_path):
    """lint-imports on the package as installed: rlvr/ with envs/ and rewards/ as rlvr.envs and rlvr.rewards."""
    pytest.importorskip("importlinter", reason="pip install -e '.[dev]' brings import-linter")
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "rlvr", tree / "rlvr", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "envs", tree / "rlvr" / "envs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "rewards", tree / "rlvr" / "rewards", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    # -I (isolated): the copy, not the editable install, is the `rlvr` that import-linter finds
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from importlinter.cli import lint_imports_command; lint_imports_command()"
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tree, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


FLOOR_1 = textwrap.dedent("""
    import asyncio, inspect, sys
    from rlvr.core.contract import ToolCall, Trajectory
    from rlvr.envs.registry import BUILTIN_ENVS, load_env
    from rlvr.rewards.registry import BUILTIN_REWARDS, load_reward

    ALWAYS = {"format", "tool_call_validity", "tool_calls", "unnecessary_calls"}
    WITH_ANSWER = {"exact_answer", "math_verify"}  # tasks with a scalar answer
    WITH_NUMBER = {"numeric_answer"}  # tasks whose answer is a number

    def is_number(value):
        try:
            return float(value) == float(value)
        except (TypeError, ValueError):
            return False
    WITH_STATE = {"final_state"}  # tasks with an expected state
    SAMPLE = {"string": "1", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    # env (options) -> the rewards written for it besides its own defaults
    CASES = [(name, {}, set()) for name in BUILTIN_ENVS if name != "bfcl"]
    CASES += [("bfcl", {"category": "multi_turn_base"}, {"bfcl_multi_turn"}), ("bfcl", {"category": "simple"}, {"bfcl_ast"})]

    def valid_call(schema):
        fn = schema["function"]
        props = fn["parameters"].get("properties", {})
        args = {k: SAMPLE.get(props[k].get("type") if isinstance(props[k].get("type"), str) else "string", "1")
                for k in fn["parameters"].get("required", [])}
        return ToolCall(name=fn["name"], arguments=args, raw="(test)")

    async def episode(env_cls, task):
        env = env_cls(task, seed=0)
        messages, schemas = env.reset()
        gold = task.gold_calls or []
        calls = ([ToolCall(name=g["name"], arguments=g["arguments"], raw="(gold)") for g in gold] if gold
                 else [valid_call(schemas[0])] if schemas else [])
        executed = []
        for call in calls:  # one call per step, in the gold order
            executed += (await env.step([call])).calls
        state = env.final_state()
        env.close()
        answer = None if task.answer is None else str(task.answer)
        return Trajectory(id="t", task_id=task.id, group_id=task.id, prompt_ids=[1], completion_ids=[2],
                          loss_mask=[1], logprobs=[0.0], tool_calls=executed, final_answer=answer,
                          final_state=state, messages=messages)

    scored = set()
    for name, options, extra in CASES:
        env_cls = load_env(name)
        task = env_cls.tasks(1, seed=0, **options)[0]
        trajectory = asyncio.run(episode(env_cls, task))
        applies = (set(env_cls.rewards) | ALWAYS | extra | (WITH_ANSWER if isinstance(task.answer, (str, int, float)) else set())
                   | (WITH_NUMBER if is_number(task.answer) else set())
                   | (WITH_STATE if task.expected_state is not None else set()))
        for reward in sorted(applies):
            value = load_reward(reward)(trajectory, task)
            if inspect.isawaitable(value):
                value = asyncio.run(value)
            scored.add(reward)
    # the judge needs an endpoint: a one-line OpenAI-compatible server on 127.0.0.1 that always says YES
    import http.server, json, threading
    class Yes(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"choices": [{"message": {"content": "YES"}}]}).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Yes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    judged = asyncio.run(load_reward("llm_judge")(trajectory, task, url=f"http://127.0.0.1:{server.server_address[1]}/v1",
                                                  model="judge", rubric="The agent answered."))
    server.shutdown()
    assert judged.total == 1.0
    scored.add("llm_judge")
    assert scored == set(BUILTIN_REWARDS), set(BUILTIN_REWARDS) - scored
    heavy = sorted(m for m in ("torch", "transformers", "ray") if m in sys.modules)
    assert not heavy, f"imported: {heavy}"
    print("ok", sorted(scored))
""")


def test_envs_and_rewards_run_without_torch_transformers_or_ray():
    """Every built-in env builds from its task source, resets, runs its tools (the gold calls, else a valid
    call) and is scored by every built-in reward that applies, in a fresh interpreter that never imports
    torch, transformers or Ray."""
    pytest.importorskip("reasoning_gym")
    pytest.importorskip("bfcl_eval")
    done = subprocess.run([sys.executable, "-c", FLOOR_1], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.startswith("ok")
