"""The python environment: problems that are easy in code and hard in the head, and a `run_python` tool.

Each call runs the model's program in a fresh sandboxed process (envs/sandbox.py: no network, a
read-only file system but for its own temp dir, CPU, memory, output and process limits where the machine
allows them, see `sandbox_layers()`; a wall-clock limit below the env's per-call timeout). The tool
answers with the program's stdout, its stderr (tracebacks included) and a status line such as
"[exit 0]" or "[killed: wall time limit 5 s]".

The tool fails closed: where the sandbox's network or file-system layer is unavailable (no user or mount
namespaces), it runs no program and answers with a refusal naming the missing layers (logged once as a
warning), unless the weaker sandbox is accepted: `env.options: {weak_sandbox: true}` (a task-source
option, stamped on each task as `metadata["weak_sandbox"]`, which the env reads) or
`PythonSandbox(weak_sandbox=True)`.

Tasks are parametric with integer answers computed here in plain Python: how many primes lie below N,
the digit sum of a power, a Fibonacci number modulo m, how many integers of a range are divisible by
x or y, Collatz steps, and coin-change counts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from typing import Any, Callable

from rlvr.core.contract import Task
from rlvr.envs.base import ToolEnv, tool
from rlvr.envs.sandbox import REQUIRED_LAYERS, SandboxLimits, SandboxResult, run_sandboxed, sandbox_layers

log = logging.getLogger(__name__)

SANDBOX_OVERHEAD_S = 1.0  # process start and clean-up, which the env's per-call timeout also covers
WEAK_SANDBOX_OPTION = "env.options: {weak_sandbox: true}"
_refusals_logged: set[tuple[str, ...]] = set()


class PythonSandbox:
    """The python toolset: runs a program in the sandbox; other envs attach it through `toolsets()`.

    Fails closed: without the layers of `required_layers` it runs nothing and answers with a refusal,
    unless `weak_sandbox=True` accepts the weaker sandbox (the audit hook alone for what is missing)."""

    required_layers: tuple[str, ...] = REQUIRED_LAYERS

    def __init__(self, limits: SandboxLimits | None = None, weak_sandbox: bool = False):
        self.limits = limits or SandboxLimits()
        self.weak_sandbox = weak_sandbox

    @tool
    def run_python(self, code: str) -> str:
        """Run a Python 3 program in a fresh process and return what it printed.

        Args:
            code: the program's source; print() the values you want to see, e.g. "print(sum(range(10)))"
        """
        result = run_sandboxed(code, self.limits, require=() if self.weak_sandbox else self.required_layers)
        if result.refused:
            return refusal(result)
        return format_result(result)


def refusal(result: SandboxResult) -> str:
    """What the model reads when the sandbox refused to run its program; logged once as a warning."""
    details = "; ".join(f"{name}: {result.layers.get(name, 'unavailable')}" for name in result.refused)
    text = (f"[refused: the python sandbox did not run the program: its {' and '.join(result.refused)} "
            f"containment {'is' if len(result.refused) == 1 else 'are'} unavailable on this machine "
            f"({details}). To accept the weaker sandbox, set {WEAK_SANDBOX_OPTION}.]")
    if result.refused not in _refusals_logged:
        _refusals_logged.add(result.refused)
        log.warning("python tool: %s", text.strip("[]"))
    return text


def describe_sandbox(weak_sandbox: bool = False) -> list[str]:
    """One line per sandbox layer, active or not, and whether the tool runs programs here."""
    layers = sandbox_layers()
    lines = [f"sandbox {name}: {'UNAVAILABLE' if state.startswith('unavailable') else 'active'} - {state}"
             for name, state in layers.items()]
    missing = [name for name in REQUIRED_LAYERS if layers.get(name, "unavailable").startswith("unavailable")]
    if not missing:
        lines.append("sandbox: fails closed; all required layers (" + ", ".join(REQUIRED_LAYERS) + ") active")
    elif weak_sandbox:
        lines.append(f"sandbox: WEAK, accepted by weak_sandbox: runs programs without {', '.join(missing)}")
    else:
        lines.append(f"sandbox: run_python REFUSES to run programs here (missing {', '.join(missing)}); "
                     f"{WEAK_SANDBOX_OPTION} accepts the weaker sandbox")
    return lines


def format_result(result: SandboxResult) -> str:
    """What the model reads: stdout, then stderr (if any), then the status line in brackets."""
    parts = [result.stdout.rstrip("\n")] if result.stdout else []
    if result.stderr:
        parts.append("stderr:\n" + result.stderr.rstrip("\n"))
    return "\n".join(parts or ["(no output)"]) + f"\n[{result.status}]"


def limits_within(tool_timeout_s: float, limits: SandboxLimits = SandboxLimits()) -> SandboxLimits:
    """`limits` with the wall-clock (and CPU) limit below the env's per-call timeout, so that a slow program
    ends with the sandbox's own report ("killed: wall time limit ...") rather than the env's bare timeout."""
    wall = min(limits.wall_time_s, max(tool_timeout_s - SANDBOX_OVERHEAD_S, tool_timeout_s / 2))
    cpu = max(1, min(limits.cpu_time_s, math.ceil(wall)))
    return dataclasses.replace(limits, wall_time_s=wall, cpu_time_s=cpu)


class PythonEnv(ToolEnv):
    """Computational problems; success = the final answer equals the task's integer."""

    name = "python"
    system_prompt = ("Solve the problem by writing a Python program and running it with the run_python tool; "
                     "print the values you need. Each run is a fresh process with a few seconds of time, no "
                     "network and nothing kept from earlier runs. Finish with the final answer as a number.")
    rewards = {"numeric_answer": 1.0, "tool_call_validity": 0.0}

    def toolsets(self) -> list[PythonSandbox]:
        weak = bool(self.task.metadata.get("weak_sandbox", False))
        return [PythonSandbox(limits_within(self.tool_timeout_s), weak_sandbox=weak)]

    @classmethod
    def tasks(cls, n: int, seed: int = 0, split: str = "train", weak_sandbox: bool = False) -> list[Task]:
        """`weak_sandbox=True` (env.options) accepts a sandbox without network or file-system containment;
        it travels to the env in each task's metadata."""
        tasks = python_tasks(n, seed, split)
        if weak_sandbox:
            for task in tasks:
                task.metadata["weak_sandbox"] = True
        return tasks

    @classmethod
    def diagnostics(cls) -> list[str]:
        """Printed by `rlvr envs check python`: which sandbox layers this machine gives."""
        return describe_sandbox()

    @classmethod
    def no_tool_tasks(cls, n: int, seed: int = 0, split: str = "train") -> list[Task]:
        """Questions answered from common knowledge, no program needed (env.conditions.no_tool_fraction)."""
        rng = random.Random(f"python-notool-{split}-{seed}")
        tasks = []
        for i in range(n):
            prompt, answer = rng.choice(NO_TOOL_QUESTIONS)
            if "{x}" in prompt:
                x, y = rng.randint(1, 4), rng.randint(1, 4)
                prompt, answer = prompt.format(x=x, y=y), x + y
            tasks.append(Task(id=f"python-{split}-notool-{seed}-{i}", env="python", prompt=prompt, answer=answer,
                              gold_calls=[], metadata={"family": "no tool", "needs_tool": False}))
        return tasks


NO_TOOL_QUESTIONS: tuple[tuple[str, int], ...] = (
    ("How many sides does a triangle have?", 3), ("How many sides does a hexagon have?", 6),
    ("How many hours are in one day?", 24), ("How many minutes are in one hour?", 60),
    ("How many days are in one week?", 7), ("How many months are in one year?", 12),
    ("What is {x} + {y}?", 0),
)


# --------------------------------------------------------------------------------------------------
# Problems: each family draws its parameters and returns (prompt, answer, parameters)


def _prime_count(rng: random.Random) -> tuple[str, int, dict[str, int]]:
    n = rng.randint(20_000, 500_000)
    sieve = bytearray([1]) * n
    sieve[:2] = b"\x00\x00"
    for p in range(2, math.isqrt(n - 1) + 1):
        if sieve[p]:
            sieve[p * p::p] = bytes(len(range(p * p, n, p)))
    return f"How many prime numbers are less than {n}?", sum(sieve), {"n": n}


def _power_digit_sum(rng: random.Random) -> tuple[str, int, dict[str, int]]:
    base, exponent = rng.choice([2, 3, 7]), rng.randint(200, 3000)
    return (f"What is the sum of the decimal digits of {base}^{exponent}?",
            sum(map(int, str(base**exponent))), {"base": base, "exponent": exponent})


def _fibonacci_mod(rng: random.Random) -> tuple[str, int, dict[str, int]]:
    n, m = rng.randint(1_000, 100_000), rng.randint(1_000, 1_000_000)
    a, b = 0, 1
    for _ in range(n):
        a, b = b, (a + b) % m
    return f"Let F(0) = 0, F(1) = 1 and F(k) = F(k-1) + F(k-2). What is F({n}) mod {m}?", a, {"n": n, "m": m}


def _divisible_count(rng: random.Random) -> tuple[str, int, dict[str, int]]:
    a = rng.randint(1, 50_000)
    b = a + rng.randint(100_000, 5_000_000)
    x, y = rng.sample(range(3, 60), 2)

    def multiples(d: int) -> int:  # of d in [a, b]
        return b // d - (a - 1) // d

    return (f"How many integers from {a} to {b} (inclusive) are divisible by {x} or by {y}?",
            multiples(x) + multiples(y) - multiples(math.lcm(x, y)), {"a": a, "b": b, "x": x, "y": y})


def _collatz_steps(rng: random.Random) -> tuple[str, int, dict[str, int]]:
    n = rng.randint(10_000, 10_000_000)
    value, steps = n, 0
    while value != 1:
        value = value // 2 if value % 2 == 0 else 3 * value + 1
        steps += 1
    return (f"Starting from {n}, repeatedly halve the number if it is even, or replace it by 3n + 1 if it is "
            f"odd. How many steps does it take to reach 1?", steps, {"n": n})


COINS = (1, 2, 5, 10, 20, 50)


def _coin_change(rng: random.Random) -> tuple[str, int, dict[str, int]]:
    amount = rng.randint(100, 2_000)
    ways = [1] + [0] * amount
    for coin in COINS:
        for total in range(coin, amount + 1):
            ways[total] += ways[total - coin]
    coins = ", ".join(map(str, COINS))
    return (f"In how many different ways can {amount} cents be paid with coins of {coins} cents (the order "
            f"of the coins does not matter)?", ways[amount], {"amount": amount})


FAMILIES: dict[str, Callable[[random.Random], tuple[str, int, dict[str, Any]]]] = {
    "prime_count": _prime_count, "power_digit_sum": _power_digit_sum, "fibonacci_mod": _fibonacci_mod,
    "divisible_count": _divisible_count, "collatz_steps": _collatz_steps, "coin_change": _coin_change,
}


def python_tasks(n: int, seed: int = 0, split: str = "train") -> list[Task]:
    """`n` problems drawn from FAMILIES, deterministic in (`seed`, `split`); parameters in metadata."""
    rng = random.Random(f"python-{split}-{seed}")
    tasks = []
    for i in range(n):
        family = rng.choice(sorted(FAMILIES))
        prompt, answer, params = FAMILIES[family](rng)
        tasks.append(Task(id=f"python-{split}-{seed}-{i}", env="python", prompt=prompt, answer=answer,
                          metadata={"family": family, "params": params}))
    return tasks
