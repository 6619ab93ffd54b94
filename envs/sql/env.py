"""The SQL environment: answer questions about a shop's SQLite database with read-only queries.

Every env gets a private in-memory copy of one fixed database (customers, products, orders, order_items;
about 900 rows built in code from a fixed seed, the same for every task). The copy is read-only twice
over: `PRAGMA query_only=ON` and an authorizer that allows reads only (SELECT, READ, FUNCTION, recursive
CTEs and a few schema pragmas), so INSERT, UPDATE, DROP, ATTACH or pragma writes are refused before they
run. A progress handler bounds each query's work (a cartesian-join bomb is aborted with a message
saying so) and a result may hold at most MAX_RESULT_ROWS rows and MAX_RESULT_BYTES of text, of which the
first SHOWN_ROWS rows are shown.

Success is the rows of the last successful `run_query` equal to the rows of the task's gold query, after
normalisation (rows as lists, integral floats as ints, other floats rounded to 6 digits, rows sorted
unless the question asks for an order).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from rlvr.core.contract import Task, ToolCall
from rlvr.envs.base import StepResult, ToolEnv, tool

MAX_RESULT_ROWS = 1000  # a larger result is refused: aggregate or add a LIMIT
SHOWN_ROWS = 50  # rows of a result the model reads; the rest are counted
MAX_QUERY_STEPS = 20_000_000  # SQLite VM instructions per query (about 0.1-0.5 s of work)
MAX_QUERY_SECONDS = 5.0  # a wall-clock backstop for work that costs few VM instructions
MAX_VALUE_BYTES = 100_000  # largest string or blob a query can build (zeroblob(1e9) is refused)
MAX_RESULT_BYTES = 2_000_000  # text and blobs of one result together, so 1000 big rows cannot fill memory
_PROGRESS_EVERY = 1000  # VM instructions between two progress-handler calls

# What the authorizer lets a query do; everything else (writes, schema changes, ATTACH, transactions,
# pragmas other than these schema reads) is denied when the statement is prepared.
_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                    sqlite3.SQLITE_RECURSIVE}
_READ_PRAGMAS = {"table_info", "table_xinfo", "foreign_key_list", "index_list", "index_info"}
_ACTION_NAMES = {getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ") for name in (
    "INSERT", "UPDATE", "DELETE", "CREATE_TABLE", "CREATE_TEMP_TABLE", "CREATE_INDEX", "CREATE_TEMP_INDEX",
    "CREATE_VIEW", "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_TEMP_TRIGGER", "CREATE_VTABLE",
    "DROP_TABLE", "DROP_TEMP_TABLE", "DROP_INDEX", "DROP_TEMP_INDEX", "DROP_VIEW", "DROP_TEMP_VIEW",
    "DROP_TRIGGER", "DROP_TEMP_TRIGGER", "DROP_VTABLE", "ALTER_TABLE", "ATTACH", "DETACH", "PRAGMA",
    "TRANSACTION", "SAVEPOINT", "ANALYZE", "REINDEX")}


class QueryError(ValueError):
    """A query that was refused or failed; the message is meant for the model to read."""


# --------------------------------------------------------------------------------------------------
# The shop database (fixed content, independent of any task)

CITIES = ("Lisbon", "Oslo", "Denver", "Osaka", "Nairobi", "Lima", "Dublin", "Perth")
YEARS = (2021, 2022, 2023, 2024)
STATUSES = ("pending", "shipped", "delivered", "cancelled")
CATALOG: dict[str, tuple[tuple[float, float], tuple[str, ...]]] = {  # category: (price range, products)
    "Electronics": ((15, 250), ("Wireless Mouse", "USB-C Hub", "Bluetooth Speaker",
                                "Noise-Cancelling Headphones", "Webcam", "Mechanical Keyboard",
                                "Portable Charger")),
    "Books": ((8, 45), ("Cookbook Classics", "Mystery Anthology", "Atlas of the World", "Poetry Collection",
                        "Gardening Handbook", "Space Encyclopedia", "Travel Guide")),
    "Kitchen": ((10, 120), ("Chef Knife", "Cast Iron Pan", "Coffee Grinder", "Cutting Board", "Tea Kettle",
                            "Spice Rack", "Blender")),
    "Garden": ((5, 90), ("Watering Can", "Pruning Shears", "Seed Starter Kit", "Garden Gloves", "Hose Reel",
                         "Bird Feeder")),
    "Sports": ((10, 180), ("Yoga Mat", "Tennis Racket", "Running Shoes", "Water Bottle", "Jump Rope",
                           "Dumbbell Set", "Cycling Helmet")),
    "Toys": ((5, 60), ("Puzzle Box", "Building Blocks", "Toy Robot", "Kite", "Board Game", "Plush Bear")),
}
_FIRST_NAMES = ("Ana", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi",
                "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sven", "Tara")
_LAST_NAMES = ("Silva", "Berg", "Martin", "Tanaka", "Okafor", "Rossi", "Novak", "Kim", "Walsh", "Costa",
               "Meyer", "Haddad", "Larsen", "Ortiz", "Sato", "Murphy")

SCHEMA = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    city TEXT NOT NULL,
    signup_year INTEGER NOT NULL
);
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    price REAL NOT NULL
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    order_date TEXT NOT NULL,  -- YYYY-MM-DD
    status TEXT NOT NULL  -- pending, shipped, delivered or cancelled
);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id),
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL,
    unit_price REAL NOT NULL,  -- the price paid per unit (the product's price, or 10% off it)
    PRIMARY KEY (order_id, product_id)
);
"""


def _sql_literal(value: Any) -> str:
    return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else repr(value)


@functools.cache
def shop_script() -> str:
    """The schema and data of the shop database as one SQL script (built once per process)."""
    rng = random.Random("rlvr-sql-shop-v1")
    statements = [SCHEMA]

    def insert(table: str, *values: Any) -> None:
        statements.append(f"INSERT INTO {table} VALUES ({', '.join(map(_sql_literal, values))});")

    names = rng.sample([f"{f} {l}" for f in _FIRST_NAMES for l in _LAST_NAMES], 60)
    for customer_id, name in enumerate(names, 1):
        email = name.lower().replace(" ", ".") + "@example.com"
        insert("customers", customer_id, name, email, rng.choice(CITIES), rng.randint(2019, 2024))
    prices = {}
    product_id = 0
    for category, ((low, high), products) in CATALOG.items():
        for product in products:
            product_id += 1
            prices[product_id] = round(rng.uniform(low, high), 2)
            insert("products", product_id, product, category, prices[product_id])
    buyers = rng.sample(range(1, len(names) + 1), 48)  # the other 12 customers never order
    for order_id in range(1, 221):
        date = f"{rng.choice(YEARS)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        status = rng.choices(STATUSES, weights=(10, 15, 60, 15))[0]
        insert("orders", order_id, rng.choice(buyers), date, status)
        for item in sorted(rng.sample(sorted(prices), rng.randint(1, 4))):
            discount = 0.9 if rng.random() < 0.2 else 1.0
            insert("order_items", order_id, item, rng.randint(1, 5), round(prices[item] * discount, 2))
    return "\n".join(statements)


_TEMPLATE_LOCK = threading.Lock()


@functools.cache
def _template_connection() -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    connection.executescript(shop_script())
    return connection


class ShopDatabase:
    """A private, read-only, work-limited copy of the shop database; safe to share between threads."""

    def __init__(self):
        self._connection = sqlite3.connect(":memory:", check_same_thread=False)
        with _TEMPLATE_LOCK:  # backup reads the shared template connection
            _template_connection().backup(self._connection)
        self._connection.execute("PRAGMA query_only = ON")
        self._connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        self._connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        self._connection.set_authorizer(self._authorize)
        self._connection.set_progress_handler(self._count_work, _PROGRESS_EVERY)
        self._lock = threading.Lock()
        self._denied: str | None = None  # what the authorizer refused in the current statement
        self._work_calls = 0
        self._deadline = 0.0
        self._over_budget: str | None = None

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
        if action in _ALLOWED_ACTIONS or (action == sqlite3.SQLITE_PRAGMA and arg1 in _READ_PRAGMAS):
            return sqlite3.SQLITE_OK
        if self._denied is None:  # the first refusal names the statement best (DROP TABLE, not DELETE)
            what = _ACTION_NAMES.get(action, f"action {action}")
            self._denied = f"{what} on {arg1}" if arg1 else what
        return sqlite3.SQLITE_DENY

    def _count_work(self) -> int:
        self._work_calls += 1
        if self._work_calls * _PROGRESS_EVERY > MAX_QUERY_STEPS:
            self._over_budget = f"more than {MAX_QUERY_STEPS:,} steps of work"
        elif time.perf_counter() > self._deadline:
            self._over_budget = f"more than {MAX_QUERY_SECONDS:g} s"
        return 1 if self._over_budget else 0  # nonzero aborts the statement

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run one read-only statement: (column names, rows); QueryError says why it was refused."""
        if not sql.strip():
            raise QueryError("empty query")
        with self._lock:
            self._denied, self._over_budget, self._work_calls = None, None, 0
            self._deadline = time.perf_counter() + MAX_QUERY_SECONDS
            cursor = self._connection.cursor()
            try:
                cursor.execute(sql)
                columns = [d[0] for d in cursor.description or ()]
                rows = self._fetch(cursor)
            except sqlite3.Error as e:
                raise QueryError(self._explain(e, sql)) from None
            finally:
                cursor.close()
        return columns, rows

    @staticmethod
    def _fetch(cursor: sqlite3.Cursor) -> list[tuple]:
        rows, size = [], 0
        for row in cursor:
            rows.append(row)
            size += sum(len(v) for v in row if isinstance(v, (str, bytes)))
            if len(rows) > MAX_RESULT_ROWS:
                raise QueryError(f"the query returns more than {MAX_RESULT_ROWS} rows; "
                                 "aggregate, filter or add a LIMIT")
            if size > MAX_RESULT_BYTES:
                raise QueryError(f"the result holds more than {MAX_RESULT_BYTES:,} characters of text; "
                                 "select fewer or shorter columns")
        return rows

    def _explain(self, error: sqlite3.Error, sql: str) -> str:
        if self._denied:
            statement = sql.split(None, 1)[0].upper()
            return (f"refused: the database is read-only and this {statement} statement needs "
                    f"{self._denied}, which is not allowed; only SELECT queries (and PRAGMA table_info) "
                    "can run")
        if self._over_budget:
            return (f"query aborted: it took {self._over_budget}, over this database's work limit; "
                    "check that every join has a join condition, or filter earlier")
        return f"SQL error: {error}"

    def table_names(self) -> list[str]:
        _, rows = self.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        return [name for (name,) in rows]

    def close(self) -> None:
        with self._lock:  # a query still running in a tool thread finishes first
            self._connection.close()


# --------------------------------------------------------------------------------------------------
# Normalised results


def normalise_value(value: Any) -> Any:
    """A JSON-able cell that compares with ==: integral floats as ints, other floats rounded to 6 digits."""
    if isinstance(value, float):
        rounded = round(value, 6)
        return int(rounded) if rounded.is_integer() else rounded
    if isinstance(value, bytes):
        return value.hex()
    return value


def _row_sort_key(row: list[Any]) -> list[tuple]:
    # None < numbers < text, so rows of mixed cell types still sort
    return [(0, 0) if v is None else (1, v) if isinstance(v, (int, float)) else (2, str(v)) for v in row]


def normalise_rows(rows: list[tuple] | list[list], ordered: bool) -> list[list[Any]]:
    """Rows as lists of normalised cells, sorted unless their order is part of the answer."""
    normalised = [[normalise_value(v) for v in row] for row in rows]
    return normalised if ordered else sorted(normalised, key=_row_sort_key)


def _answer_is_ordered(task: Task) -> bool:
    """Whether the row order is part of the answer: the task says so, or else its gold query sorts."""
    if "ordered" in task.metadata:
        return bool(task.metadata["ordered"])
    return re.search(r"\border\s+by\b", task.metadata.get("gold_sql", ""), re.IGNORECASE) is not None


def _format_cell(value: Any) -> str:
    return "NULL" if value is None else str(normalise_value(value))


def format_result(columns: list[str], rows: list[tuple]) -> str:
    """A result as text: a header line, up to SHOWN_ROWS rows of ` | `-separated cells, and the row count."""
    lines = [" | ".join(columns)]
    lines += [" | ".join(map(_format_cell, row)) for row in rows[:SHOWN_ROWS]]
    count = f"{len(rows)} row" + ("" if len(rows) == 1 else "s")
    lines.append(f"({count}; showing the first {SHOWN_ROWS})" if len(rows) > SHOWN_ROWS else f"({count})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The environment


class SqlEnv(ToolEnv):
    """Questions about the shop database; success = the last query's rows equal the gold query's rows."""

    name = "sql"
    system_prompt = (
        "You are a data analyst with read-only access to a shop's SQLite database. Use list_tables and "
        "describe_table to learn the schema and run_query to run SELECT queries. Your answer is the result "
        "of your last successful query: finish by running one query whose rows are exactly the answer, "
        "with the columns the question asks for, in that order (and in the row order it asks for, if any). "
        "Then state the answer briefly."
    )
    rewards = {"final_state": 1.0, "tool_call_validity": 0.0}

    def __init__(self, task: Task, seed: int = 0, tool_timeout_s: float = 10.0):
        super().__init__(task, seed, tool_timeout_s)
        self.database = ShopDatabase()
        self.ordered = _answer_is_ordered(task)
        self._rows_by_sql: dict[str, list[list[Any]]] = {}  # normalised results of the queries that ran
        self._last_result: list[list[Any]] | None = None

    @tool
    def list_tables(self) -> str:
        """List the tables of the database with their row counts."""
        counts = [f"{t} ({self.database.query(f'SELECT COUNT(*) FROM {t}')[1][0][0]} rows)"
                  for t in self.database.table_names()]
        return "\n".join(counts)

    @tool
    def describe_table(self, table: str) -> str:
        """Show a table's columns (name, type, key), its foreign keys and three example rows.

        Args:
            table: the table's name, as given by list_tables
        """
        tables = self.database.table_names()
        if table not in tables:
            raise ValueError(f"unknown table {table!r}; tables: {', '.join(tables)}")
        _, columns = self.database.query(f"PRAGMA table_info({table})")
        lines = [f"{name} {kind}" + (" PRIMARY KEY" if pk else "") + (" NOT NULL" if notnull else "")
                 for _, name, kind, notnull, _, pk in columns]
        _, keys = self.database.query(f"PRAGMA foreign_key_list({table})")
        lines += [f"{column} REFERENCES {other}({other_column})"
                  for _, _, other, column, other_column, *_ in keys]
        names, examples = self.database.query(f"SELECT * FROM {table} LIMIT 3")
        return "\n".join(lines) + "\nexample rows:\n" + format_result(names, examples)

    @tool
    def run_query(self, sql: str) -> str:
        """Run one read-only SQL query (SQLite dialect) and show its result.

        Args:
            sql: a single SELECT statement, e.g. "SELECT city, COUNT(*) FROM customers GROUP BY city"
        """
        columns, rows = self.database.query(sql)
        self._rows_by_sql[sql] = normalise_rows(rows, self.ordered)
        return format_result(columns, rows)

    async def step(self, calls: list[ToolCall]) -> StepResult:
        result = await super().step(calls)
        # "the last successful query" in the order the model wrote the calls, not the order they finished
        for call in calls:
            if call.name == "run_query" and call.error is None:
                self._last_result = self._rows_by_sql[call.arguments["sql"]]
        return result

    def final_state(self) -> dict[str, Any]:
        return {"result": self._last_result}

    def call_progress(self, call: ToolCall) -> float | None:
        """+1 for a query whose rows are the expected answer, 0 for any other query."""
        if call.name != "run_query" or not self.task.expected_state:
            return None
        return float(self._rows_by_sql.get(call.arguments["sql"]) == self.task.expected_state.get("result"))

    def close(self) -> None:
        self.database.close()

    @classmethod
    def tasks(cls, n: int, seed: int = 0, split: str = "train") -> list[Task]:
        """Questions with gold queries; the "test" split holds questions that never appear in other splits."""
        return sql_tasks(n, seed, split)


# --------------------------------------------------------------------------------------------------
# Questions

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
