"""The shop database behind the SQL env: a read-only, work-bounded SQLite copy, and result normalisation."""

from __future__ import annotations

import functools
import random
import re
import sqlite3
import threading
import time
from typing import Any

from rlvr.core.contract import Task


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


def answer_is_ordered(task: Task) -> bool:
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
