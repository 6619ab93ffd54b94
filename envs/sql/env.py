"""SqlEnv: list_tables, describe_table and run_query on a private copy of the shop database."""

from __future__ import annotations

from typing import Any

from rlvr.core.contract import Task, ToolCall
from rlvr.envs.base import StepResult, ToolEnv, tool
from rlvr.envs.sql.backend import ShopDatabase, answer_is_ordered, format_result, normalise_rows
from rlvr.envs.sql.tasks import sql_tasks


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
        self.ordered = answer_is_ordered(task)
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
