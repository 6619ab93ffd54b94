"""The calculator environment: multi-step arithmetic word problems and a safe `calculate` tool.

The numbers are too large for a small model to multiply in its head (SmolLM2-135M answers 17*23 = 381),
so calling the tool is what solves the task. Expressions are evaluated by walking Python's AST over a
whitelist of nodes: no eval(), no names, no attributes, bounded exponents and magnitudes.
"""

from __future__ import annotations

import ast
import math
import operator
import random
from dataclasses import dataclass
from typing import Callable

from rlvr.core.contract import Task, ToolCall
from rlvr.envs.base import ToolEnv, tool

MAX_MAGNITUDE = 1e15  # results beyond this are refused: no arithmetic bombs such as 9**9**9
MAX_EXPONENT = 64
MAX_LENGTH = 200

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}


class CalculationError(ValueError):
    """A bad expression; the message is meant for the model to read."""


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression of numbers, + - * / // % ** and parentheses."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculationError("empty expression")
    if len(expression) > MAX_LENGTH:
        raise CalculationError(f"expression longer than {MAX_LENGTH} characters")
    text = expression.replace("^", "**").replace("×", "*").replace("÷", "/").replace(",", "")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise CalculationError(f"syntax error at position {e.offset or 0}: {expression!r}") from None
    value = _eval(tree.body)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return value


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculationError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise CalculationError("division by zero")
        try:
            value = _BINARY[type(node.op)](left, right)
        except (OverflowError, ValueError) as e:
            raise CalculationError(f"{left} {_SYMBOL[type(node.op)]} {right}: {e}") from None
        if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
            raise CalculationError(f"{left} {_SYMBOL[type(node.op)]} {right} has no real finite value")
        if abs(value) > MAX_MAGNITUDE:
            raise CalculationError(f"result {value:.3g} is too large (at most {MAX_MAGNITUDE:.0e})")
        return value
    if isinstance(node, ast.Name):
        raise CalculationError(f"unknown name {node.id!r}: only numbers and + - * / // % ** ( ) are allowed")
    raise CalculationError(f"unsupported syntax ({type(node).__name__}): only numbers and + - * / // % ** ( )")


def format_number(value: int | float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


class Calculator:
    """The calculator toolset (stateless); other envs attach it through `toolsets()`."""

    @tool
    def calculate(self, expression: str) -> str:
        """Evaluate an arithmetic expression.

        Args:
            expression: numbers with + - * / // % ** and parentheses, e.g. "(1234 + 56) * 7"
        """
        return format_number(evaluate(expression))


class CalculatorEnv(ToolEnv):
    """Arithmetic word problems; success = the final answer equals the task's number."""

    name = "calculator"
    system_prompt = ("Solve the problem. Use the calculator tool for arithmetic. "
                     "Finish with the final answer as a number.")
    rewards = {"numeric_answer": 1.0, "tool_call_validity": 0.0}

    def toolsets(self) -> list[Calculator]:
        return [Calculator()]

    def call_progress(self, call: ToolCall) -> float | None:
        """+1 for a call whose result is a step of the gold solution (an intermediate value or the answer),
        0 for any other: which calls helped, even in a trajectory whose final answer is wrong."""
        if not self.task.gold_calls:
            return None
        steps = {format_number(evaluate(g["arguments"]["expression"])) for g in self.task.gold_calls}
        return float(call.result in steps)

    @classmethod
    def tasks(cls, n: int, seed: int = 0, split: str = "train", family: str | None = None,
              shapes: list[str] | None = None, wordings_per_shape: int | None = None) -> list[Task]:
        """Word problems; the "test" split uses the held-out wording family unless `family` is given."""
        return calculator_tasks(n, seed, family or ("heldout" if split == "test" else "train"), split, shapes,
                                wordings_per_shape)


# --------------------------------------------------------------------------------------------------
# Word problems


@dataclass(frozen=True)
class _Template:
    text: str  # with {a}, {b}, {c} and {item}
    steps: tuple[str, str]  # the gold solution: two calculator expressions, the second using {r}, the first's result

    @property
    def shape(self) -> str:
        """The solution as one expression, e.g. "a * (b + c)"."""
        return self.steps[1].replace("{r}", f"({self.steps[0]})").replace("{", "").replace("}", "")


ITEMS = ("boxes", "crates", "tickets", "bottles", "parcels", "books", "chairs", "lamps")

# Two families with disjoint wording: tasks of the "heldout" family never share a template with "train".
# Both cover the same five solution shapes, a + b*c, a - b*c, a * (b + c), a*b - c and a/b + c, with the
# numbers in varying order, so a policy has to read which number plays which part from the words rather
# than from where the numbers stand.
TEMPLATES: dict[str, tuple[_Template, ...]] = {
    "train": (
        _Template("A warehouse holds {a} {item}. It receives {b} more shipments of {c} {item} each. "
                  "How many {item} does it hold now?", ("{b} * {c}", "{a} + {r}")),
        _Template("A library starts the year with {a} {item}. During the year {b} donors give {c} {item} each. "
                  "How many {item} does the library have at the end of the year?", ("{b} * {c}", "{a} + {r}")),
        _Template("There are {b} trucks carrying {c} {item} each, and a depot already stores {a} {item}. "
                  "After the trucks unload, how many {item} are in the depot?", ("{b} * {c}", "{a} + {r}")),
        _Template("A port holds {a} {item}. It sends out {b} ships carrying {c} {item} each. "
                  "How many {item} are left in the port?", ("{b} * {c}", "{a} - {r}")),
        _Template("Anna had {a} {item}. She gave {c} {item} to each of her {b} friends. "
                  "How many {item} does she have left?", ("{b} * {c}", "{a} - {r}")),
        _Template("A store sells {item} at {a} dollars each. On Monday it sold {b} and on Tuesday {c}. "
                  "How many dollars did it take in over the two days?", ("{b} + {c}", "{a} * {r}")),
        _Template("A club buys {b} {item} in spring and {c} {item} in autumn. Each one costs {a} dollars. "
                  "How much does the club spend?", ("{b} + {c}", "{a} * {r}")),
        _Template("A factory made {a} {item} per day for {b} days, then shipped {c} of them. "
                  "How many {item} are left?", ("{a} * {b}", "{r} - {c}")),
        _Template("For {b} months a shop orders {a} {item} a month. It sells {c} of them. "
                  "How many {item} are still unsold?", ("{a} * {b}", "{r} - {c}")),
        _Template("{a} {item} are shared equally among {b} shops, and each shop then buys {c} more. "
                  "How many {item} does each shop have?", ("{a} / {b}", "{r} + {c}")),
        _Template("A school splits {a} {item} evenly between {b} classes. Later every class receives another "
                  "{c}. How many {item} does each class have now?", ("{a} / {b}", "{r} + {c}")),
    ),
    "heldout": (
        _Template("Maria counted {a} {item} in the morning. By evening the pile had grown by {b} groups "
                  "of {c}. What is her evening count?", ("{b} * {c}", "{a} + {r}")),
        _Template("The depot had {a} {item} on Monday. On Tuesday {b} vans each took away {c}. "
                  "How many are still at the depot?", ("{b} * {c}", "{a} - {r}")),
        _Template("The price of one of the {item} is {a}. If a school orders {b} of them and later "
                  "orders {c} more, what is the total bill?", ("{b} + {c}", "{a} * {r}")),
        _Template("Over {b} weeks a workshop builds {a} {item} each week. It donates {c} of them. "
                  "What remains?", ("{a} * {b}", "{r} - {c}")),
        _Template("A baker divides {a} {item} into {b} equal boxes and then adds {c} to every box. "
                  "How many {item} are in one box?", ("{a} / {b}", "{r} + {c}")),
    ),
}

SHAPES = tuple(dict.fromkeys(t.shape for t in TEMPLATES["train"]))


def calculator_tasks(n: int, seed: int = 0, family: str = "train", split: str = "train",
                     shapes: list[str] | None = None, wordings_per_shape: int | None = None) -> list[Task]:
    """`n` word problems from the template `family` ("train" or "heldout"), deterministic in `seed`;
    `shapes` keeps only templates of those solution shapes (`SHAPES`), `wordings_per_shape` only the first
    that many templates of each shape.

    Numbers are drawn so that every answer is a positive integer and at least one step is a multiplication
    of three- or four-digit numbers. `gold_calls` solve it in two calculator calls, the second using the
    first's result. `split` only names the tasks (ids are `calculator-{split}-{seed}-{i}`).
    """
    if family not in TEMPLATES:
        raise ValueError(f"unknown calculator task family {family!r}; choose one of {', '.join(TEMPLATES)}")
    templates = [t for t in TEMPLATES[family] if shapes is None or t.shape in shapes]
    if not templates or (shapes is not None and set(shapes) - set(SHAPES)):
        raise ValueError(f"calculator shapes {shapes!r}: choose among {', '.join(map(repr, SHAPES))}")
    if wordings_per_shape is not None:
        if wordings_per_shape < 1:
            raise ValueError(f"calculator wordings_per_shape must be at least 1, got {wordings_per_shape}")
        templates = [t for i, t in enumerate(templates)
                     if [u.shape for u in templates[:i]].count(t.shape) < wordings_per_shape]
    rng = random.Random(f"calculator-{family}-{seed}")
    tasks = []
    for i in range(n):
        template = rng.choice(templates)
        b, c = rng.randint(12, 99), rng.randint(100, 999)
        if template.steps[0] == "{a} / {b}":  # divides evenly
            a = b * rng.randint(50, 999)
        elif template.steps[1] == "{a} - {r}":  # more than is taken away
            a = b * c + rng.randint(1000, 9999)
        else:
            a = rng.randint(1000, 9999)
        first = template.steps[0].format(a=a, b=b, c=c)
        second = template.steps[1].format(a=a, b=b, c=c, r=format_number(evaluate(first)))
        tasks.append(Task(
            id=f"calculator-{split}-{seed}-{i}", env="calculator",
            prompt=template.text.format(a=a, b=b, c=c, item=rng.choice(ITEMS)),
            answer=int(evaluate(second)), metadata={"family": family, "kind": template.shape},
            gold_calls=[{"name": "calculate", "arguments": {"expression": e}} for e in (first, second)],
        ))
    return tasks
