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


from rlvr.envs.sql.env import SqlEnv
from rlvr.envs.sql.tasks import sql_tasks

__all__ = ["SqlEnv", "sql_tasks"]
