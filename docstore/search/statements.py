"""Running a search's statements: one that binds a list (``$in``, ``$nin``) is planned with its
values every time it runs.

PostgreSQL hashes the list of ``x = ANY($n)`` only in a plan made with the list's values (a
custom plan). asyncpg prepares every statement and keeps it on the connection, and PostgreSQL
switches a prepared statement to a generic plan from its sixth run when that looks no dearer
— and a generic plan compares each row with every value of the list in turn. An exact search
filtered by a 300-value ``$in`` on metadata took 55 ms for its first five runs on a connection
and 370 ms from the sixth on (20,000 rows; ``bench/RESULTS.md``), and the cost grows with the
list (:data:`~docstore.search.filters.MAX_LIST` values are allowed). A statement with a list
PostgreSQL would hash (9 values or more) is prepared anew for each run (:func:`fetch`: one
round trip more, 0.2 ms where the search took 0.9 ms) or, for work of several statements, runs
in a transaction under ``plan_cache_mode = force_custom_plan`` (:func:`planned_for`); every
other statement runs as it is. (The ANN path's filtered statements already run under that
setting: :func:`~docstore.search.queries.ann_settings_sql`.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from docstore.search.filters import binds_a_long_list

T = TypeVar("T")
Work = Callable[[asyncpg.Connection], Awaitable[T]]

CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"


def custom_plans(work: Work[T]) -> Work[T]:
    """``work`` in a transaction (a savepoint in one already open) in which every statement is
    planned with its values (:data:`CUSTOM_PLANS`)."""

    async def planned(conn: asyncpg.Connection) -> T:
        async with conn.transaction():
            await conn.execute(CUSTOM_PLANS)
            return await work(conn)

    return planned


def planned_for(sql: str, params: list[Any], work: Work[T]) -> Work[T]:
    """``work``, which runs ``sql`` with ``params``: under :func:`custom_plans` if it binds a
    list PostgreSQL would hash (:func:`~docstore.search.filters.binds_a_long_list`)."""
    return custom_plans(work) if binds_a_long_list(sql, params) else work


def fetch(sql: str, params: list[Any]) -> Work[list[Any]]:
    """The rows of ``sql`` with ``params``, as work for ``Runner.run``: if it binds a list
    PostgreSQL would hash, from a statement of its own rather than the one asyncpg keeps on
    the connection — a prepared statement's first run is planned with its values."""
    if not binds_a_long_list(sql, params):

        async def rows(conn: asyncpg.Connection) -> list[Any]:
            return await conn.fetch(sql, *params)

        return rows

    own = sql + _OWN_STATEMENT

    async def planned(conn: asyncpg.Connection) -> list[Any]:
        statement = await conn.prepare(own)
        return await statement.fetch(*params)

    return planned


_OWN_STATEMENT = "\n/* docstore: planned with its values */"
"""Ends the text of a statement :func:`fetch` prepares anew. asyncpg closes such a statement
once it is dropped only if no statement of the same text is in the connection's cache; the
same filter with a short list, run through ``conn.fetch``, puts one there (review 84: 2,001
statements kept on one connection after a short list and 2,000 long ones, 41 MB of server
memory)."""
