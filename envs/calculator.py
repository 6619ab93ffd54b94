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
import zlib
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
        """Word problems; the "test" split uses the held-out wording family unless `family` is given
        (family "gsm": GSM8K's wording, `gsm_symbolic_tasks`)."""
        if family == "gsm":
            if shapes is not None or wordings_per_shape is not None:
                raise ValueError("calculator family 'gsm' has no shapes or wordings_per_shape to choose")
            return gsm_symbolic_tasks(n, seed, split)
        return calculator_tasks(n, seed, family or ("heldout" if split == "test" else "train"), split, shapes,
                                wordings_per_shape)

    @classmethod
    def no_tool_tasks(cls, n: int, seed: int = 0, split: str = "train") -> list[Task]:
        """Questions a reader answers without arithmetic (env.conditions.no_tool_fraction)."""
        return no_tool_calculator_tasks(n, seed, "heldout" if split == "test" else "train", split)


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

# Two families with disjoint wording: tasks of the "heldout" family never share a template with "train",
# and most of its 25 templates use styles the 11 training ones never do (first person, terse ledgers,
# other domains), so held-out success measures transfer to wording, not recall of it.
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
        # styles the training family never uses: first person, terse ledgers, questions first, other domains
        _Template("Quick question: my savings account has {a} dollars and I deposit {c} dollars every month "
                  "for {b} months. What's the balance at the end, ignoring interest?", ("{b} * {c}", "{a} + {r}")),
        _Template("Inventory check. Opening stock: {a} {item}. Deliveries: {b} pallets, {c} {item} per pallet. "
                  "Closing stock?", ("{b} * {c}", "{a} + {r}")),
        _Template("If a stadium already seats {a} people and the owners add {b} new sections with {c} seats in "
                  "each, how many seats will it have?", ("{b} * {c}", "{a} + {r}")),
        _Template("Compute the total number of {item}: {b} containers hold {c} each, plus {a} loose ones.",
                  ("{b} * {c}", "{a} + {r}")),
        _Template("A water tank holds {a} liters. {b} buckets of {c} liters each are drawn from it. How much "
                  "water remains in the tank?", ("{b} * {c}", "{a} - {r}")),
        _Template("Budget: {a} dollars. Expense: {b} laptops at {c} dollars apiece. Remaining budget?",
                  ("{b} * {c}", "{a} - {r}")),
        _Template("You start with {a} {item} and hand out {c} to each of {b} volunteers. How many {item} do "
                  "you still have?", ("{b} * {c}", "{a} - {r}")),
        _Template("From a stock of {a} {item}, {b} orders of {c} {item} were shipped. What is left in stock?",
                  ("{b} * {c}", "{a} - {r}")),
        _Template("Each ticket costs {a} dollars. A school buys {b} tickets for students and {c} tickets for "
                  "teachers. What is the total cost?", ("{b} + {c}", "{a} * {r}")),
        _Template("A printer prints {a} pages per hour. It runs {b} hours on Monday and {c} hours on Tuesday. "
                  "How many pages does it print in total?", ("{b} + {c}", "{a} * {r}")),
        _Template("Unit price: {a}. Quantity ordered in March: {b}. Quantity ordered in April: {c}. Total "
                  "spend over both months?", ("{b} + {c}", "{a} * {r}")),
        _Template("There are {b} red crates and {c} blue crates, and every crate holds {a} {item}. How many "
                  "{item} are there altogether?", ("{b} + {c}", "{a} * {r}")),
        _Template("A farm harvests {a} kg of apples a day for {b} days and sells {c} kg. How many kg are not "
                  "sold?", ("{a} * {b}", "{r} - {c}")),
        _Template("Production: {a} {item} per shift, {b} shifts. Defective: {c}. Good units?",
                  ("{a} * {b}", "{r} - {c}")),
        _Template("I read {a} pages every day for {b} days, but {c} of those pages were ones I had already "
                  "read. How many new pages did I read?", ("{a} * {b}", "{r} - {c}")),
        _Template("A machine fills {a} bottles per minute for {b} minutes; {c} bottles break. How many intact "
                  "bottles are there?", ("{a} * {b}", "{r} - {c}")),
        _Template("A prize of {a} dollars is split equally among {b} winners, and each winner also gets a {c} "
                  "dollar bonus. How much does each winner receive?", ("{a} / {b}", "{r} + {c}")),
        _Template("Split {a} {item} evenly into {b} groups, then add {c} {item} to each group. How many {item} "
                  "per group?", ("{a} / {b}", "{r} + {c}")),
        _Template("{b} friends share a bill of {a} dollars equally, and each one adds a {c} dollar tip. What "
                  "does each friend pay?", ("{a} / {b}", "{r} + {c}")),
        _Template("A road of {a} meters is divided into {b} equal sections, and each section is extended by "
                  "{c} meters. How long is each section now?", ("{a} / {b}", "{r} + {c}")),
    ),
    # questions as users send them (messages, notes, tickets), sharing no template with the other two: tasks
    # with answers and no demonstrations, in wording that neither the demonstrations nor the held-out tasks use
    "field": (
        _Template("hey, we had {a} {item} at the start of the month and got {b} deliveries of {c} each since. "
                  "how many do we have now?", ("{b} * {c}", "{a} + {r}")),
        _Template("Note to self: balance {a}. Add {b} payments of {c} each. New balance = ?",
                  ("{b} * {c}", "{a} + {r}")),
        _Template("Can you help? Our archive held {a} files, then {b} teams each uploaded {c} files. What is the "
                  "file count now?", ("{b} * {c}", "{a} + {r}")),
        _Template("Ticket: the warehouse reports {a} {item} before dispatch; {b} trucks left carrying {c} "
                  "{item} each. Please confirm the remaining count.", ("{b} * {c}", "{a} - {r}")),
        _Template("we started the season with {a} liters of fuel and {b} boats each used {c} liters. how much "
                  "fuel is left?", ("{b} * {c}", "{a} - {r}")),
        _Template("Starting credit {a}; {b} downloads at {c} credits each were charged. What credit remains?",
                  ("{b} * {c}", "{a} - {r}")),
        _Template("Hi! Each seat costs {a} dollars. We need {b} seats for adults and {c} for kids. What will we "
                  "pay in total?", ("{b} + {c}", "{a} * {r}")),
        _Template("A courier is paid {a} dollars per parcel and delivered {b} parcels yesterday and {c} today. "
                  "What did the courier earn over the two days?", ("{b} + {c}", "{a} * {r}")),
        _Template("Rate {a} per unit; units in batch one: {b}; units in batch two: {c}. Cost of both batches?",
                  ("{b} + {c}", "{a} * {r}")),
        _Template("our line makes {a} {item} an hour and ran for {b} hours, but {c} failed inspection. how many "
                  "passed?", ("{a} * {b}", "{r} - {c}")),
        _Template("Question from the team: {b} interns each scan {a} pages, and {c} of the scans were lost. How "
                  "many scans do we keep?", ("{a} * {b}", "{r} - {c}")),
        _Template("A hotel books {a} rooms a night for {b} nights; {c} bookings were cancelled. How many "
                  "bookings stand?", ("{a} * {b}", "{r} - {c}")),
        _Template("Need a number: {a} dollars split evenly across {b} departments, then each gets a {c} dollar "
                  "top-up. What does one department get?", ("{a} / {b}", "{r} + {c}")),
        _Template("We have {a} {item} to pack into {b} equal crates, plus {c} extra {item} per crate. How many "
                  "{item} go in each crate?", ("{a} / {b}", "{r} + {c}")),
        _Template("If {a} kg of flour is shared equally by {b} bakeries and each bakery buys {c} kg more, how "
                  "many kg does each bakery have?", ("{a} / {b}", "{r} + {c}")),
    ),
}

SHAPES = tuple(dict.fromkeys(t.shape for t in TEMPLATES["train"]))


def calculator_tasks(n: int, seed: int = 0, family: str = "train", split: str = "train",
                     shapes: list[str] | None = None, wordings_per_shape: int | None = None) -> list[Task]:
    """`n` word problems from the template `family` ("train", "heldout" or "field"), deterministic in `seed`;
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


GSM_MAX_COMPUTATIONS = 2  # the calculator templates' solutions take two
# reasoning-gym appends this to every question; the calculator's system prompt already asks for a number
GSM_SUFFIX = " Give the result as your final answer. Do not include units."


def gsm_symbolic_tasks(n: int, seed: int = 0, split: str = "train") -> list[Task]:
    """`n` word problems in GSM8K's wording, from reasoning-gym's `gsm_symbolic` generator (GSM-Symbolic's
    templates of GSM8K test problems), deterministic in `seed` and `split`: wording written outside this
    project, for measuring how far what a policy learned on the calculator families carries.

    Kept: problems whose reference solution writes at most GSM_MAX_COMPUTATIONS results ("=" in its worked
    answer), as the calculator families' do, and whose answer is an integer; 26 of the generator's 100 templates
    give such problems. The "test" split draws from half of those templates and every other split from the rest
    (`gsm_test_template`), so RL on this family's answers never sees the wording it is tested on. Answer-only
    (no gold calls); metadata family "gsm", kind "gsm template N" and "gsm_symbolic" (the generator's seed and
    index). Ids are `calculator-{split}-gsm-{seed}-{i}`.
    """
    from rlvr.envs.reasoning_gym import import_reasoning_gym  # the package loads only for this family

    size = 16 * n + 64  # about one problem in seven passes the filter and the split
    generator_seed = zlib.crc32(f"calculator-gsm-{split}-{seed}".encode())
    dataset = import_reasoning_gym().create_dataset("gsm_symbolic", size=size, seed=generator_seed)
    tasks = []
    for index in range(size):
        if gsm_test_template(dataset.task_indices[index]) != (split == "test"):
            continue
        entry = dataset[index]
        if entry["metadata"]["answer_cot"].count("=") > GSM_MAX_COMPUTATIONS:
            continue
        try:
            answer = int(entry["answer"])
        except ValueError:
            continue
        tasks.append(Task(id=f"calculator-{split}-gsm-{seed}-{len(tasks)}", env="calculator",
                          prompt=entry["question"].removesuffix(GSM_SUFFIX), answer=answer,
                          metadata={"family": "gsm", "kind": f"gsm template {dataset.task_indices[index]}",
                                    "gsm_symbolic": {"seed": generator_seed, "index": index}}))
        if len(tasks) == n:
            return tasks
    raise ValueError(f"gsm_symbolic gave {len(tasks)} problems of at most {GSM_MAX_COMPUTATIONS} computations "
                     f"in {size}; asked for {n}")


def gsm_test_template(index: int) -> bool:
    """Whether gsm_symbolic's template `index` belongs to the gsm family's "test" split (a fixed half)."""
    return zlib.crc32(f"gsm-template-{index}".encode()) % 2 == 0


# Questions that need no calculator: the answer is a number the text states (among distractors), or a sum
# of two numbers below 5. Same two wording families; kind "no tool", no gold calls.
NO_TOOL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "A warehouse holds {a} {item}. No {item} arrive or leave today. How many {item} does it hold at the "
        "end of the day?",
        "A shop has {a} {item} and {b} employees. How many {item} does the shop have?",
        "Sam has {x} {item} and buys {y} more. How many {item} does Sam have now?",
    ),
    "heldout": (
        "The depot stores {a} {item}; {b} trucks are parked outside. How many {item} are stored at the depot?",
        "Lena owns {a} {item}. She keeps all of them this week. How many {item} does she own at the end of "
        "the week?",
        "There are {x} {item} on a table and someone puts down {y} more. How many {item} are on the table?",
        "Quick check: the report lists {a} {item} in stock and {b} suppliers. How many {item} are in stock?",
        "I have {x} {item} in one hand and {y} in the other. How many {item} am I holding?",
        "Order #{b} contains {a} {item}, and nothing was removed from it. How many {item} does it contain?",
    ),
}


def no_tool_calculator_tasks(n: int, seed: int = 0, family: str = "train", split: str = "train") -> list[Task]:
    """`n` questions from NO_TOOL_TEMPLATES[`family`], deterministic in `seed`; ids
    `calculator-{split}-notool-{seed}-{i}`, metadata needs_tool=False."""
    rng = random.Random(f"calculator-notool-{family}-{seed}")
    tasks = []
    for i in range(n):
        template = rng.choice(NO_TOOL_TEMPLATES[family])
        a, b, x, y = rng.randint(100, 9999), rng.randint(12, 99), rng.randint(1, 4), rng.randint(1, 4)
        answer = x + y if "{x}" in template else a
        tasks.append(Task(id=f"calculator-{split}-notool-{seed}-{i}", env="calculator",
                          prompt=template.format(a=a, b=b, x=x, y=y, item=rng.choice(ITEMS)), answer=answer,
                          gold_calls=[], metadata={"family": family, "kind": "no tool", "needs_tool": False}))
    return tasks
