"""LangGraph PostgreSQL savers over a psycopg-pool pool, configured the way they need.

The saver needs autocommit connections that return dict rows. Server-side prepared
statements are used unless the URL goes through a transaction-pooling proxy, where a
statement prepared on one server connection does not exist on the next.
"""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from durakit import faults

CONNECT_TIMEOUT_SECONDS = 5

# A server that vanished without closing the connection (a failover, a cut network) is
# noticed within about a minute instead of the kernel's two hours (TCP connections only).
DEAD_PEER_DETECTION = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


def connection_kwargs(*, transaction_pooler: bool = False) -> dict[str, Any]:
    """Per-connection settings for every connection a saver (or durakit) uses."""
    return {
        "autocommit": True,
        "row_factory": dict_row,
        # 0: prepare every statement on first use; None: never (transaction poolers).
        "prepare_threshold": None if transaction_pooler else 0,
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "application_name": "durakit",  # operators find durakit's sessions in pg_stat_activity
        **DEAD_PEER_DETECTION,
    }


def pool_options(*, max_size: int, transaction_pooler: bool, name: str) -> dict[str, Any]:
    """Pool settings shared by the sync and async pools: connections are checked before
    they are lent and recycled when idle or old."""
    return {
        "min_size": 1,
        "max_size": max_size,
        "kwargs": connection_kwargs(transaction_pooler=transaction_pooler),
        "max_idle": 300,
        "max_lifetime": 1800,
        "timeout": CONNECT_TIMEOUT_SECONDS * 2,
        "name": name,
        "open": False,
    }


def open_pool(
    url: str, *, max_size: int = 4, transaction_pooler: bool = False, name: str = "durakit"
) -> ConnectionPool:
    """An open sync pool, or PoolTimeout if the database cannot be reached."""
    options = pool_options(max_size=max_size, transaction_pooler=transaction_pooler, name=name)
    pool = ConnectionPool(url, check=ConnectionPool.check_connection, **options)
    pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS * 2)
    return pool


async def open_async_pool(
    url: str, *, max_size: int = 4, transaction_pooler: bool = False, name: str = "durakit"
) -> AsyncConnectionPool:
    """An open async pool, same settings as `open_pool`."""
    options = pool_options(max_size=max_size, transaction_pooler=transaction_pooler, name=name)
    pool = AsyncConnectionPool(url, check=AsyncConnectionPool.check_connection, **options)
    await pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS * 2)
    return pool


class FaultablePostgresSaver(PostgresSaver):
    """PostgresSaver with DURAKIT_FAULT's `after_writes` point: the process can die right
    after a node's output is saved and before the checkpoint that follows it."""

    def put_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
        super().put_writes(config, writes, task_id, task_path)
        faults.maybe_kill(task_path.rpartition(", ")[2], "after_writes")


def postgres_saver(pool: ConnectionPool) -> PostgresSaver:
    """A sync saver on `pool`. The schema is alembic's: never call its setup() here."""
    return FaultablePostgresSaver(pool)


def async_postgres_saver(pool: AsyncConnectionPool) -> AsyncPostgresSaver:
    """An async saver on `pool`, same tables and settings as `postgres_saver`."""
    return AsyncPostgresSaver(pool)
