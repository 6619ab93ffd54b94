"""The SQL env's questions: templates over the shop database, each with its gold query and rows."""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
from dataclasses import dataclass
from typing import Any

from rlvr.core.contract import Task
from rlvr.envs.sql.backend import CATALOG, CITIES, STATUSES, YEARS, ShopDatabase, normalise_rows


_NOT_CANCELLED = "excluding cancelled orders"
_VALUE = "quantity × unit_price summed over its items"


@dataclass(frozen=True)
class QuestionTemplate:
    name: str
    question: str  # with {placeholders} filled from `params`
    sql: str  # the gold query, same placeholders
    params: dict[str, tuple[Any, ...]]  # each placeholder's possible values
    key_column: int | None = None  # for ordered answers: the column the order is by (it must have no ties)

    @property
    def ordered(self) -> bool:
        return self.key_column is not None


_SPENT = "SUM(oi.quantity * oi.unit_price)"
TEMPLATES: tuple[QuestionTemplate, ...] = (
    QuestionTemplate(
        "customers_in_city", "How many customers live in {city}?",
        "SELECT COUNT(*) FROM customers WHERE city = '{city}'", {"city": CITIES}),
    QuestionTemplate(
        "cheap_products", "List the names of the {category} products that cost less than ${price}.",
        "SELECT name FROM products WHERE category = '{category}' AND price < {price}",
        {"category": tuple(CATALOG), "price": (20, 40, 75, 150)}),
    QuestionTemplate(
        "orders_by_status_in_year", "How many orders placed in {year} have the status '{status}'?",
        "SELECT COUNT(*) FROM orders WHERE status = '{status}' AND strftime('%Y', order_date) = '{year}'",
        {"year": YEARS, "status": STATUSES}),
    QuestionTemplate(
        "category_revenue_in_year",
        f"What was the total revenue from {{category}} products in {{year}}, {_NOT_CANCELLED}? "
        "Revenue is quantity × unit_price summed over order items.",
        f"SELECT {_SPENT} FROM order_items oi JOIN orders o ON o.id = oi.order_id "
        "JOIN products p ON p.id = oi.product_id WHERE p.category = '{category}' "
        "AND o.status != 'cancelled' AND strftime('%Y', o.order_date) = '{year}'",
        {"category": tuple(CATALOG), "year": YEARS}),
    QuestionTemplate(
        "top_spenders_in_year",
        f"Who were the top {{k}} customers by spending in {{year}}, {_NOT_CANCELLED}? Spending is "
        "quantity × unit_price summed over order items. Give each customer's name and amount spent, "
        "highest first.",
        f"SELECT c.name, {_SPENT} AS spent FROM customers c JOIN orders o ON o.customer_id = c.id "
        "JOIN order_items oi ON oi.order_id = o.id WHERE o.status != 'cancelled' "
        "AND strftime('%Y', o.order_date) = '{year}' GROUP BY c.id ORDER BY spent DESC LIMIT {k}",
        {"k": (3, 5), "year": YEARS}, key_column=1),
    QuestionTemplate(
        "units_by_category_for_city",
        f"How many units of each product category did customers from {{city}} buy, {_NOT_CANCELLED}? "
        "Give each category they bought from and the number of units.",
        "SELECT p.category, SUM(oi.quantity) FROM order_items oi JOIN orders o ON o.id = oi.order_id "
        "JOIN customers c ON c.id = o.customer_id JOIN products p ON p.id = oi.product_id "
        "WHERE c.city = '{city}' AND o.status != 'cancelled' GROUP BY p.category",
        {"city": CITIES}),
    QuestionTemplate(
        "customers_without_orders",
        "Which customers from {city} have never placed an order? Give their names.",
        "SELECT name FROM customers WHERE city = '{city}' AND id NOT IN (SELECT customer_id FROM orders)",
        {"city": CITIES}),
    QuestionTemplate(
        "best_sellers_in_category",
        f"Which {{k}} {{category}} products sold the most units, {_NOT_CANCELLED}? "
        "Give the product name and units sold, most first.",
        "SELECT p.name, SUM(oi.quantity) AS units FROM products p "
        "JOIN order_items oi ON oi.product_id = p.id JOIN orders o ON o.id = oi.order_id "
        "WHERE p.category = '{category}' AND o.status != 'cancelled' "
        "GROUP BY p.id ORDER BY units DESC LIMIT {k}",
        {"k": (2, 3), "category": tuple(CATALOG)}, key_column=1),
    QuestionTemplate(
        "status_count_in_city",
        "How many orders from customers in {city} currently have the status '{status}'?",
        "SELECT COUNT(*) FROM orders o JOIN customers c ON c.id = o.customer_id "
        "WHERE c.city = '{city}' AND o.status = '{status}'",
        {"city": CITIES, "status": STATUSES}),
    QuestionTemplate(
        "monthly_orders",
        "How many orders were placed in each month of {year}? Give the month as a two-digit string "
        "('01' to '12') and the number of orders, in month order.",
        "SELECT strftime('%m', order_date) AS month, COUNT(*) FROM orders "
        "WHERE strftime('%Y', order_date) = '{year}' GROUP BY month ORDER BY month",
        {"year": YEARS}, key_column=0),
    QuestionTemplate(
        "recent_signups_in_city",
        "List the email addresses of the customers from {city} who signed up in {year} or later.",
        "SELECT email FROM customers WHERE city = '{city}' AND signup_year >= {year}",
        {"city": CITIES, "year": (2020, 2021, 2022, 2023)}),
    QuestionTemplate(
        "large_orders_in_year",
        f"Which orders placed in {{year}} have a value above ${{threshold}}? An order's value is {_VALUE}. "
        "Give the order id and its value, largest first.",
        f"SELECT o.id, {_SPENT} AS value FROM orders o JOIN order_items oi ON oi.order_id = o.id "
        "WHERE strftime('%Y', o.order_date) = '{year}' GROUP BY o.id HAVING value > {threshold} "
        "ORDER BY value DESC",
        {"year": YEARS, "threshold": (500, 1000, 1500)}, key_column=1),
    QuestionTemplate(
        "priciest_product_in_category",
        "What is the most expensive product in the {category} category? Give its name and price.",
        "SELECT name, price FROM products WHERE category = '{category}' ORDER BY price DESC LIMIT {k}",
        {"category": tuple(CATALOG), "k": (1,)}, key_column=1),
    QuestionTemplate(
        "distinct_buyers_in_year",
        f"How many different customers bought {{category}} products in {{year}}, {_NOT_CANCELLED}?",
        "SELECT COUNT(DISTINCT o.customer_id) FROM orders o JOIN order_items oi ON oi.order_id = o.id "
        "JOIN products p ON p.id = oi.product_id WHERE p.category = '{category}' "
        "AND strftime('%Y', o.order_date) = '{year}' AND o.status != 'cancelled'",
        {"category": tuple(CATALOG), "year": YEARS}),
    QuestionTemplate(
        "average_order_value_in_city",
        f"What is the average value of the orders placed by customers from {{city}}, {_NOT_CANCELLED}? "
        f"An order's value is {_VALUE}.",
        f"SELECT AVG(value) FROM (SELECT {_SPENT} AS value FROM orders o "
        "JOIN order_items oi ON oi.order_id = o.id JOIN customers c ON c.id = o.customer_id "
        "WHERE c.city = '{city}' AND o.status != 'cancelled' GROUP BY o.id)",
        {"city": CITIES}),
)


@dataclass(frozen=True)
class Question:
    template: str
    text: str
    sql: str
    ordered: bool
    result: list[list[Any]]


def _is_empty(rows: list[list[Any]]) -> bool:
    """No rows, or nothing but NULLs and zeros (a wrong filter gives those too)."""
    return all(v is None or v == 0 for row in rows for v in row)


def _has_ties(database: ShopDatabase, template: QuestionTemplate, params: dict[str, Any]) -> bool:
    """Whether rows tie on the ordering column, so more than one row order (or top-k set) is right."""
    # a tie with the row just past the limit counts too: either row could be in the answer
    widened = {**params, "k": params["k"] + 1} if "k" in params else params
    keys = [row[template.key_column] for row in database.query(template.sql.format(**widened))[1]]
    return len(set(keys)) < len(keys)


def _split_of(template: str, params: dict[str, Any]) -> str:
    """A fixed fifth of all questions is held out for the "test" split."""
    digest = hashlib.sha1(f"{template}:{sorted(params.items())}".encode()).digest()
    return "test" if digest[0] % 5 == 0 else "train"


@functools.cache
def questions(split: str) -> dict[str, tuple[Question, ...]]:
    """Every usable question of a split ("test", or "train" for any other), by template name.

    A question is usable when its answer is not empty and, if ordered, has no ties on its ordering column.
    """
    split = "test" if split == "test" else "train"
    database = ShopDatabase()
    found: dict[str, tuple[Question, ...]] = {}
    for template in TEMPLATES:
        usable = []
        for values in itertools.product(*template.params.values()):
            params = dict(zip(template.params, values))
            if _split_of(template.name, params) != split:
                continue
            sql = template.sql.format(**params)
            rows = normalise_rows(database.query(sql)[1], template.ordered)
            if _is_empty(rows) or (template.ordered and _has_ties(database, template, params)):
                continue
            text = template.question.format(**params)
            usable.append(Question(template.name, text, sql, template.ordered, rows))
        if usable:
            found[template.name] = tuple(usable)
    database.close()
    return found


def sql_tasks(n: int, seed: int = 0, split: str = "train") -> list[Task]:
    """`n` questions, deterministic in `seed`: a template uniformly, then one of its usable questions.

    Questions of the "test" split never appear in other splits; `split` also names the tasks
    (ids are `sql-{split}-{seed}-{i}`).
    """
    by_template = questions(split)
    rng = random.Random(f"sql-{split}-{seed}")
    tasks = []
    for i in range(n):
        question = rng.choice(by_template[rng.choice(sorted(by_template))])
        tasks.append(Task(
            id=f"sql-{split}-{seed}-{i}", env="sql", prompt=question.text,
            expected_state={"result": question.result},
            gold_calls=[{"name": "run_query", "arguments": {"sql": question.sql}}],
            metadata={"gold_sql": question.sql, "ordered": question.ordered, "template": question.template},
        ))
    return tasks
