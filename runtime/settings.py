"""Process-wide settings, read from the environment (see README's Environment table)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from durakit.errors import InvalidInput


@dataclass(frozen=True)
class KitSettings:
    database_url: str | None
    """DURAKIT_DATABASE_URL: a PostgreSQL server. None: the embedded server."""

    home: Path
    """DURAKIT_HOME: where the embedded database lives (default ~/.durakit)."""

    transaction_pooler: bool
    """DURAKIT_TRANSACTION_POOLER=1: the URL goes through a transaction-pooling proxy
    (PgBouncer in transaction mode), so no server-side prepared statements are used."""

    pool_max_size: int
    """DURAKIT_POOL_MAX_SIZE: connections in each process's pool (default 4)."""

    db_retry_seconds: int = 30
    """DURAKIT_DB_RETRY_SECONDS: how long a run waits for a lost database to come back
    before it gives up (the thread stays `running`; `durakit resume` continues it)."""

    @classmethod
    def from_env(cls) -> KitSettings:
        return cls(
            database_url=os.environ.get("DURAKIT_DATABASE_URL") or None,
            home=Path(os.environ.get("DURAKIT_HOME") or Path.home() / ".durakit").expanduser(),
            transaction_pooler=os.environ.get("DURAKIT_TRANSACTION_POOLER", "") in {"1", "true", "yes"},
            pool_max_size=positive_int("DURAKIT_POOL_MAX_SIZE", default=4),
            db_retry_seconds=positive_int("DURAKIT_DB_RETRY_SECONDS", default=30),
        )


def positive_int(name: str, *, default: int) -> int:
    value = os.environ.get(name) or str(default)
    if not value.isdigit() or int(value) < 1:
        raise InvalidInput(f"{name} must be a whole number of at least 1, not {value!r}.")
    return int(value)
