"""durakit's PostgreSQL savers (`durakit.checkpointers.saver`) over a psycopg-pool pool,
configured the way they need, and the pool every durakit process uses.

The saver needs autocommit connections that return dict rows. Server-side prepared
statements are used unless the URL goes through a transaction-pooling proxy, where a
statement prepared on one server connection does not exist on the next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection, Connection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

if TYPE_CHECKING:  # the savers load LangGraph: only commands that run a graph import them
    from langgraph.checkpoint.serde.base import SerializerProtocol

    from durakit.checkpointers.saver import AsyncDurakitSaver, DurakitSaver

CONNECT_TIMEOUT_SECONDS = 5
# psycopg-pool replaces a lost connection with attempts 1, 2, 4, 8, ... s apart, for this
# long; then the next loan that has to wait starts again from 1 s. Its default (5 minutes)
# would leave a pool unused for a minute after a 35 s outage, two after a 60 s one.
RECONNECT_TIMEOUT_SECONDS = 10

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


def ping(conn: Connection[Any]) -> None:
    """The check before each loan: an empty statement, never prepared. psycopg-pool's own
    check is prepared under a new name at each loan (prepare_threshold=0 prepares every
    statement at once) and psycopg then forgets the name, an empty query not being
    cacheable, so the server kept one statement per loan until the connection closed."""
    conn.execute("", prepare=False)  # durakit's connections are autocommit: no transaction is left open


async def ping_async(conn: AsyncConnection[Any]) -> None:
    """`ping` for async pools."""
    await conn.execute("", prepare=False)


def pool_options(*, max_size: int, transaction_pooler: bool, name: str) -> dict[str, Any]:
    """Pool settings shared by the sync and async pools: connections are recycled when
    idle or old."""
    return {
        "min_size": 1,
        "max_size": max_size,
        "kwargs": connection_kwargs(transaction_pooler=transaction_pooler),
        "max_idle": 300,
        "max_lifetime": 1800,
        "timeout": CONNECT_TIMEOUT_SECONDS * 2,
        "reconnect_timeout": RECONNECT_TIMEOUT_SECONDS,
        "name": name,
        "open": False,
    }


def open_pool(
    url: str, *, max_size: int = 4, transaction_pooler: bool = False, name: str = "durakit", checked: bool = True
) -> ConnectionPool:
    """An open sync pool, or PoolTimeout if the database cannot be reached.

    `checked`: ping each connection before lending it (a round trip), so a connection
    broken meanwhile (a server restart) is replaced instead of failing its statement.
    The runner's saver pool goes without: the ping costs a tenth of a durable step, and a
    run that meets a broken connection reconnects and goes on from its checkpoint."""
    options = pool_options(max_size=max_size, transaction_pooler=transaction_pooler, name=name)
    pool = ConnectionPool(url, check=ping if checked else None, **options)
    pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS * 2)
    return pool


async def open_async_pool(
    url: str, *, max_size: int = 4, transaction_pooler: bool = False, name: str = "durakit", checked: bool = True
) -> AsyncConnectionPool:
    """An open async pool, same settings as `open_pool`."""
    options = pool_options(max_size=max_size, transaction_pooler=transaction_pooler, name=name)
    pool = AsyncConnectionPool(url, check=ping_async if checked else None, **options)
    await pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS * 2)
    return pool


def postgres_saver(pool: ConnectionPool, *, serde: SerializerProtocol | None = None) -> DurakitSaver:
    """durakit's sync saver on `pool`. The schema is alembic's: never call its setup() here.

    With an encrypting `serde`, primitive channel values go to blobs too, so nothing a
    state holds is left in clear in the checkpoint's JSONB."""
    from durakit.checkpointers.saver import DurakitSaver

    return DurakitSaver(pool, serde=serde, inline_primitives=serde is None)


def async_postgres_saver(pool: AsyncConnectionPool, *, serde: SerializerProtocol | None = None) -> AsyncDurakitSaver:
    """durakit's async saver on `pool`, same tables and settings as `postgres_saver`."""
    from durakit.checkpointers.saver import AsyncDurakitSaver

    return AsyncDurakitSaver(pool, serde=serde, inline_primitives=serde is None)
