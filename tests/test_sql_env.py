import asyncio
import time

import pytest

from rlvr.core.contract import ToolCall, ToolCallError
from rlvr.envs.registry import load_env
from rlvr.envs.sql import SqlEnv, sql_tasks
from rlvr.envs.sql.backend import MAX_RESULT_BYTES, MAX_RESULT_ROWS, SHOWN_ROWS, ShopDatabase, normalise_rows
from rlvr.envs.sql.tasks import TEMPLATES, questions


def _run(env, *calls):
    asyncio.run(env.step(list(calls)))
    return calls


def _query(sql):
    return ToolCall(name="run_query", arguments={"sql": sql})


def _task(template):
    return next(t for t in sql_tasks(200) if t.metadata["template"] == template)


def _fingerprint(env):
    """Everything a write could change: the schema and a checksum of every table."""
    sql = ("SELECT (SELECT group_concat(sql) FROM sqlite_master), "
           "(SELECT COUNT(*) || ':' || SUM(price) FROM products), "
           "(SELECT COUNT(*) || ':' || SUM(length(name || email || city)) FROM customers), "
           "(SELECT COUNT(*) || ':' || SUM(customer_id) || group_concat(status) FROM orders), "
           "(SELECT COUNT(*) || ':' || SUM(quantity * unit_price) FROM order_items)")
    return env.database.query(sql)[1]


def test_registered_with_its_tools_and_rewards():
    env = load_env("sql")(sql_tasks(1)[0])
    messages, tools = env.reset()
    assert env.name == "sql" and env.rewards == {"final_state": 1.0, "tool_call_validity": 0.0}
    assert {t["function"]["name"] for t in tools} == {"list_tables", "describe_table", "run_query"}
    assert messages[0]["role"] == "system" and "read-only" in messages[0]["content"]


def test_schema_tools():
    env = SqlEnv(sql_tasks(1)[0])
    tables, orders, unknown = _run(
        env, ToolCall(name="list_tables"), ToolCall(name="describe_table", arguments={"table": "orders"}),
        ToolCall(name="describe_table", arguments={"table": "orders; DROP TABLE orders"}))
    assert tables.result.splitlines() == ["customers (60 rows)", "order_items (577 rows)",
                                          "orders (220 rows)", "products (40 rows)"]
    assert orders.result.splitlines()[:5] == ["id INTEGER PRIMARY KEY", "customer_id INTEGER NOT NULL",
                                              "order_date TEXT NOT NULL", "status TEXT NOT NULL",
                                              "customer_id REFERENCES customers(id)"]
    assert orders.result.splitlines()[5:8] == ["example rows:", "id | customer_id | order_date | status",
                                               "1 | 28 | 2021-08-15 | delivered"]
    assert unknown.error == ToolCallError.raised and unknown.result.endswith(
        "unknown table 'orders; DROP TABLE orders'; tables: customers, order_items, orders, products")
    assert tables.scores == {}  # schema lookups get no progress score


def test_queries_on_the_fixed_dataset():
    env = SqlEnv(sql_tasks(1)[0])
    totals, product, statuses, missing, error = _run(
        env, _query("SELECT COUNT(*), SUM(quantity), ROUND(SUM(quantity * unit_price), 2) FROM order_items"),
        _query("SELECT * FROM products WHERE id = 1"),
        _query("SELECT status, COUNT(*) FROM orders GROUP BY status ORDER BY status"),
        _query("SELECT NULL AS unknown, 2.50 AS price"), _query("SELECT nope FROM orders"))
    assert totals.result.splitlines() == ["COUNT(*) | SUM(quantity) | ROUND(SUM(quantity * unit_price), 2)",
                                          "577 | 1691 | 113264.84", "(1 row)"]
    assert product.result == "id | name | category | price\n1 | Wireless Mouse | Electronics | 25.67\n(1 row)"
    assert statuses.result.splitlines()[1:] == ["cancelled | 24", "delivered | 134", "pending | 26",
                                                "shipped | 36", "(4 rows)"]
    assert missing.result == "unknown | price\nNULL | 2.5\n(1 row)"
    assert error.error == ToolCallError.raised and "SQL error: no such column: nope" in error.result


def test_results_are_capped():
    env = SqlEnv(sql_tasks(1)[0])
    shown, too_many = _run(env, _query("SELECT order_id, product_id FROM order_items LIMIT 120"),
                           _query("SELECT * FROM order_items a JOIN orders b"))
    lines = shown.result.splitlines()
    assert len(lines) == 1 + SHOWN_ROWS + 1 and lines[-1] == f"(120 rows; showing the first {SHOWN_ROWS})"
    assert len(env.final_state()["result"]) == 120  # the answer keeps every row; only the display is cut
    assert too_many.error == ToolCallError.raised and f"more than {MAX_RESULT_ROWS} rows" in too_many.result
    (too_big,) = _run(env, _query("SELECT zeroblob(90000) FROM order_items LIMIT 100"))
    assert too_big.error == ToolCallError.raised
    assert f"more than {MAX_RESULT_BYTES:,} characters" in too_big.result


@pytest.mark.parametrize("sql, needs", [
    ("INSERT INTO customers VALUES (61, 'Eve', 'eve@example.com', 'Oslo', 2024)", "INSERT on customers"),
    ("UPDATE products SET price = 0", "UPDATE on products"),
    ("DELETE FROM orders", "DELETE on orders"),
    ("DROP TABLE orders", "this DROP statement"),
    ("CREATE TABLE t (a)", "this CREATE statement"),
    ("ALTER TABLE orders ADD COLUMN note TEXT", "ALTER TABLE"),
    ("ATTACH DATABASE ':memory:' AS other", "ATTACH"),
    ("PRAGMA query_only = OFF", "PRAGMA on query_only"),
    ("PRAGMA writable_schema = ON", "PRAGMA on writable_schema"),
    ("BEGIN", "TRANSACTION"),
    ("WITH doomed AS (SELECT id FROM orders) DELETE FROM orders WHERE id IN doomed", "DELETE on orders"),
])
def test_writes_are_refused_and_change_nothing(sql, needs):
    env = SqlEnv(sql_tasks(1)[0])
    before = _fingerprint(env)
    (call,) = _run(env, _query(sql))
    assert call.error == ToolCallError.raised
    assert "refused: the database is read-only" in call.result and needs in call.result
    assert "only SELECT queries" in call.result
    assert _fingerprint(env) == before and env.final_state() == {"result": None}


def test_other_statements_fail_safely():
    env = SqlEnv(sql_tasks(1)[0])
    two, blob, info = _run(env, _query("SELECT 1; DELETE FROM orders"), _query("SELECT zeroblob(1000000000)"),
                           _query("PRAGMA table_info(products)"))
    assert "one statement at a time" in two.result and "too big" in blob.result
    assert info.error is None and "category | TEXT" in info.result  # schema pragmas are reads


@pytest.mark.parametrize("sql", [
    "SELECT COUNT(*) FROM order_items a, order_items b, order_items c",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT MAX(i) FROM n",
])
def test_runaway_queries_are_aborted(sql):
    env = SqlEnv(sql_tasks(1)[0])
    start = time.perf_counter()
    (call,) = _run(env, _query(sql))
    assert time.perf_counter() - start < 3
    assert call.error == ToolCallError.raised
    assert "query aborted" in call.result and "work limit" in call.result
    (after,) = _run(env, _query("SELECT COUNT(*) FROM orders"))
    assert after.result.splitlines()[1] == "220"  # the next query runs normally


def test_envs_have_private_copies():
    a, b = ShopDatabase(), ShopDatabase()
    assert a.query("SELECT COUNT(*) FROM orders") == b.query("SELECT COUNT(*) FROM orders")
    a.close()
    assert b.query("SELECT COUNT(*) FROM orders")[1] == [(220,)]


def test_normalise_rows():
    rows = [("b", 2.0), (None, 1 / 3), ("a", 0.1 + 0.2), (3, b"\x01")]
    assert normalise_rows(rows, ordered=False) == [[None, 0.333333], [3, "01"], ["a", 0.3], ["b", 2]]
    assert normalise_rows(rows, ordered=True) == [["b", 2], [None, 0.333333], ["a", 0.3], [3, "01"]]
    assert isinstance(normalise_rows([(2.0,)], ordered=False)[0][0], int)


def test_tasks_are_deterministic_and_splits_disjoint():
    tasks = sql_tasks(40, seed=3)
    assert tasks == sql_tasks(40, seed=3) and tasks != sql_tasks(40, seed=4)
    assert tasks[0].id == "sql-train-3-0" and sql_tasks(1, split="test")[0].id == "sql-test-0-0"
    train, test = questions("train"), questions("test")
    assert set(train) == {t.name for t in TEMPLATES}
    train_sql = {q.sql for qs in train.values() for q in qs}
    assert not train_sql & {q.sql for qs in test.values() for q in qs}
    for task in tasks:
        assert task.expected_state["result"] and task.gold_calls == [
            {"name": "run_query", "arguments": {"sql": task.metadata["gold_sql"]}}]
        assert task.metadata["ordered"] == ("ORDER BY" in task.metadata["gold_sql"])


def test_gold_query_replays_to_the_expected_result_for_every_template():
    tasks = {t.metadata["template"]: t for t in reversed(sql_tasks(200))}
    assert set(tasks) == {t.name for t in TEMPLATES}
    for task in tasks.values():
        env = SqlEnv(task)
        assert env.final_state() != task.expected_state  # doing nothing fails
        calls = _run(env, *(ToolCall(**c) for c in task.gold_calls))
        assert env.final_state() == task.expected_state, task.metadata["template"]
        assert calls[0].scores["progress"] == 1.0
        (wrong,) = _run(env, _query("SELECT 42"))
        assert env.final_state() != task.expected_state and wrong.scores["progress"] == 0.0


def test_row_order_counts_only_when_the_question_asks_for_one():
    unordered, ordered = _task("cheap_products"), _task("top_spenders_in_year")
    assert len(unordered.expected_state["result"]) > 1 and len(ordered.expected_state["result"]) > 1
    env = SqlEnv(unordered)
    _run(env, _query(f"SELECT * FROM ({unordered.metadata['gold_sql']}) ORDER BY 1 DESC"))
    assert env.final_state() == unordered.expected_state
    env = SqlEnv(ordered)
    _run(env, _query(f"SELECT * FROM ({ordered.metadata['gold_sql']}) ORDER BY 2 ASC"))
    assert env.final_state() != ordered.expected_state


def test_the_answer_is_the_last_successful_query_in_call_order():
    task = _task("customers_in_city")
    env = SqlEnv(task)
    gold = task.metadata["gold_sql"]
    _run(env, _query(gold), _query("SELECT nope"))
    assert env.final_state() == task.expected_state  # a failing query after it leaves the answer
    _run(env, _query(gold), _query("SELECT 0"))
    assert env.final_state() == {"result": [[0]]}
