"""durakit's checkpoint savers: stock LangGraph's tables, fewer round trips per step.

`DurakitSaver` (sync) and `AsyncDurakitSaver` (async) have the same shape. Reading is
stock's (`get_tuple`, `list`, DeltaChannel history); what changes is writing and the
locking:

- `put` saves a checkpoint and its new blobs in one statement; stock sends one
  statement (and one commit) per blob plus one for the checkpoint.
- `put_writes` saves a task's writes in one statement; stock sends one per write.
- Over a pool, calls run in parallel on their own connections; stock serialises every
  call of a saver instance behind one lock, even over a pool.
- `copy_thread` (with `until=` for a fork) and `delete_for_runs` exist (stock raises
  NotImplementedError), and `keep_latest(thread, n)` for retention.
- No pipeline mode: a call is one statement already.
- `inline_primitives=False` stores even str/int/float/bool channel values as blobs,
  so an encrypting serializer covers them too (stock keeps them in clear in the
  checkpoint's JSONB).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from psycopg import AsyncCursor, Cursor
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from durakit import faults
from durakit.checkpointers import sql
from durakit.errors import CheckpointNotFound, HistoryNeeded
from durakit.lease import LEASE_EPOCH_KEY, lease_lost

PRIMITIVES = (str, int, float, bool)


class _Statements:
    """Turns LangGraph's arguments into the parameters of durakit's statements.

    Shared by the sync and the async saver so that both write identical rows."""

    serde: SerializerProtocol
    inline_primitives: bool

    def _put_params(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> tuple[dict[str, Any], RunnableConfig]:
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        checkpoint_ns = configurable["checkpoint_ns"]
        inline: dict[str, Any] = {}
        channels: list[str] = []
        versions: list[str] = []
        types: list[str] = []
        blobs: list[bytes | None] = []
        for channel, value in checkpoint["channel_values"].items():
            primitive = value is None or isinstance(value, PRIMITIVES)
            if isinstance(value, _DeltaSnapshot):
                inline[channel] = True  # stock's marker: the snapshot is in the blob
            elif primitive and self.inline_primitives:
                inline[channel] = value
                continue
            version = new_versions.get(channel)
            if version is None and primitive:
                # Saved inline by an earlier checkpoint (before inlining was turned off, for
                # encryption): without a blob at its version, this checkpoint would lose it.
                version = checkpoint["channel_versions"].get(channel)
            if version is not None:
                type_, blob = self.serde.dumps_typed(value)
                channels.append(channel)
                versions.append(str(version))
                types.append(type_)
                blobs.append(blob)
        params = {
            "thread_id": thread_id,
            "lease_epoch": configurable.get(LEASE_EPOCH_KEY),
            "checkpoint_ns": checkpoint_ns,
            "checkpoint_id": checkpoint["id"],
            "parent_checkpoint_id": configurable.get("checkpoint_id"),
            "checkpoint": Jsonb({**checkpoint, "channel_values": inline}),
            "metadata": Jsonb(get_serializable_checkpoint_metadata(config, metadata)),
            "channels": channels,
            "versions": versions,
            "types": types,
            "blobs": blobs,
        }
        next_config: RunnableConfig = {
            "configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns, "checkpoint_id": checkpoint["id"]}
        }
        return params, next_config

    def _put_writes_params(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str
    ) -> tuple[str, dict[str, Any]]:
        configurable = config["configurable"]
        replacing = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        by_idx: dict[int, tuple[str, Any]] = {}
        for idx, (channel, value) in enumerate(writes):
            # Special writes share an index per channel. As in stock, the last one wins when
            # they replace, the first when writes are saved once.
            key = WRITES_IDX_MAP.get(channel, idx)
            if replacing or key not in by_idx:
                by_idx[key] = (channel, value)
        idxs: list[int] = []
        channels: list[str] = []
        types: list[str] = []
        blobs: list[bytes] = []
        for idx, (channel, value) in by_idx.items():
            type_, blob = self.serde.dumps_typed(value)
            idxs.append(idx)
            channels.append(channel)
            types.append(type_)
            blobs.append(blob)
        fenced = configurable.get(LEASE_EPOCH_KEY) is not None
        if replacing:
            statement = sql.PUT_WRITES_REPLACING_FENCED if fenced else sql.PUT_WRITES_REPLACING
        else:
            statement = sql.PUT_WRITES_ONCE_FENCED if fenced else sql.PUT_WRITES_ONCE
        params = {
            "thread_id": configurable["thread_id"],
            "lease_epoch": configurable.get(LEASE_EPOCH_KEY),
            "checkpoint_ns": configurable["checkpoint_ns"],
            "checkpoint_id": configurable["checkpoint_id"],
            "task_id": task_id,
            "task_path": task_path,
            "idxs": idxs,
            "channels": channels,
            "types": types,
            "blobs": blobs,
        }
        return statement, params


def _put_statement(params: dict[str, Any]) -> str:
    return sql.PUT_CHECKPOINT if params["lease_epoch"] is None else sql.PUT_CHECKPOINT_FENCED


def _check_fence(params: dict[str, Any], row: DictRow | None) -> None:
    """A fenced write that matched nothing: another process has the thread now."""
    if params["lease_epoch"] is not None and not (row and row["held"]):
        raise lease_lost(params["thread_id"])


def _refuse_pipeline(pipe: Any) -> None:
    if pipe is not None:
        raise ValueError("durakit's savers send one statement per call and take no pipeline; pass a pool or a connection.")


def _id_list(thread_ids: Sequence[str]) -> list[str]:
    if isinstance(thread_ids, str):
        raise TypeError("expected a sequence of ids, not a str")
    return [str(thread_id) for thread_id in thread_ids]


class DurakitSaver(_Statements, PostgresSaver):
    """Sync saver: pass a `ConnectionPool` (calls then run in parallel) or a single
    `Connection` (calls then take turns, as in stock)."""

    def __init__(
        self,
        conn: ConnectionPool | Any,
        pipe: None = None,
        *,
        serde: SerializerProtocol | None = None,
        inline_primitives: bool = True,
    ) -> None:
        _refuse_pipeline(pipe)
        super().__init__(conn, serde=serde)
        self.inline_primitives = inline_primitives

    @contextmanager
    def _cursor(self, *, pipeline: bool = False) -> Iterator[Cursor[DictRow]]:
        if not isinstance(self.conn, ConnectionPool):
            with super()._cursor(pipeline=pipeline) as cur:
                yield cur
            return
        with self.conn.connection() as conn, conn.cursor(binary=True, row_factory=dict_row) as cur:
            yield cur

    @contextmanager
    def _transaction(self, cur: Cursor[DictRow] | None = None) -> Iterator[Cursor[DictRow]]:
        """A cursor in a transaction of its own, or the caller's `cur` in the caller's."""
        if cur is not None:
            yield cur
            return
        with self._cursor() as cur, cur.connection.transaction():
            yield cur

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        params, next_config = self._put_params(config, checkpoint, metadata, new_versions)
        with self._cursor() as cur:
            cur.execute(_put_statement(params), params)
            _check_fence(params, cur.fetchone() if cur.description else None)
        return next_config

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        statement, params = self._put_writes_params(config, writes, task_id, task_path)
        with self._cursor() as cur:
            cur.execute(statement, params)
            _check_fence(params, cur.fetchone() if cur.description else None)
        faults.maybe_kill(task_path.rpartition(", ")[2], "after_writes")

    def delete_thread(self, thread_id: str) -> None:
        with self._transaction() as cur:
            for statement in sql.DELETE_THREAD:
                cur.execute(statement, {"thread_id": str(thread_id)})

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        run_ids = _id_list(run_ids)
        if not run_ids:
            return
        with self._transaction() as cur:
            thread_ids = [row["thread_id"] for row in cur.execute(sql.THREADS_OF_RUNS, {"run_ids": run_ids})]
            for statement in sql.DELETE_FOR_RUNS:
                cur.execute(statement, {"run_ids": run_ids, "thread_ids": thread_ids})

    def copy_thread(
        self, source_thread_id: str, target_thread_id: str, *, until: str | None = None, cur: Cursor[DictRow] | None = None
    ) -> None:
        """Copy a thread's checkpoints, writes and blobs to a new thread id. With `until`,
        copy up to that checkpoint: the copy then runs the step after it again. Pass
        `cur` to run inside the caller's transaction."""
        params = {"source": str(source_thread_id), "target": str(target_thread_id), "until": until}
        with self._transaction(cur) as cur:
            if until is not None and not cur.execute(
                sql.CHECKPOINT_EXISTS, {"thread_id": params["source"], "checkpoint_id": until}
            ).fetchone():
                raise CheckpointNotFound(f"Thread {source_thread_id} has no checkpoint {until}.")
            for statement in sql.COPY_THREAD:
                cur.execute(statement, params)

    def keep_latest(self, thread_id: str, keep: int, *, cur: Cursor[DictRow] | None = None) -> int:
        """Delete all but the `keep` latest checkpoints of each namespace of a thread;
        returns how many went. Pass `cur` to run inside the caller's transaction."""
        if keep < 1:
            raise ValueError("keep must be at least 1")
        params = {"thread_id": str(thread_id), "keep": keep}
        removed = 0
        with self._transaction(cur) as cur:
            if cur.execute(sql.USES_DELTA_CHANNEL, params).fetchone()["exists"]:
                raise HistoryNeeded(f"Thread {thread_id} uses a DeltaChannel, whose values are rebuilt from its history.")
            for statement in sql.KEEP_LATEST:
                cur.execute(statement, params)
                if statement is sql.KEEP_LATEST[1]:
                    removed = cur.rowcount
        return removed


class AsyncDurakitSaver(_Statements, AsyncPostgresSaver):
    """Async saver, same shape as `DurakitSaver`; over an `AsyncConnectionPool` up to
    the pool's size of calls run at once."""

    def __init__(
        self,
        conn: AsyncConnectionPool | Any,
        pipe: None = None,
        *,
        serde: SerializerProtocol | None = None,
        inline_primitives: bool = True,
    ) -> None:
        _refuse_pipeline(pipe)
        super().__init__(conn, serde=serde)
        self.inline_primitives = inline_primitives

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[AsyncCursor[DictRow]]:
        if not isinstance(self.conn, AsyncConnectionPool):
            async with super()._cursor(pipeline=pipeline) as cur:
                yield cur
            return
        async with self.conn.connection() as conn, conn.cursor(binary=True, row_factory=dict_row) as cur:
            yield cur

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncCursor[DictRow]]:
        async with self._cursor() as cur, cur.connection.transaction():
            yield cur

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        params, next_config = self._put_params(config, checkpoint, metadata, new_versions)
        async with self._cursor() as cur:
            await cur.execute(_put_statement(params), params)
            _check_fence(params, await cur.fetchone() if cur.description else None)
        return next_config

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        statement, params = self._put_writes_params(config, writes, task_id, task_path)
        async with self._cursor() as cur:
            await cur.execute(statement, params)
            _check_fence(params, await cur.fetchone() if cur.description else None)
        faults.maybe_kill(task_path.rpartition(", ")[2], "after_writes")

    async def adelete_thread(self, thread_id: str) -> None:
        async with self._transaction() as cur:
            for statement in sql.DELETE_THREAD:
                await cur.execute(statement, {"thread_id": str(thread_id)})

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        run_ids = _id_list(run_ids)
        if not run_ids:
            return
        async with self._transaction() as cur:
            await cur.execute(sql.THREADS_OF_RUNS, {"run_ids": run_ids})
            thread_ids = [row["thread_id"] for row in await cur.fetchall()]
            for statement in sql.DELETE_FOR_RUNS:
                await cur.execute(statement, {"run_ids": run_ids, "thread_ids": thread_ids})

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str, *, until: str | None = None) -> None:
        """Async `DurakitSaver.copy_thread`."""
        params = {"source": str(source_thread_id), "target": str(target_thread_id), "until": until}
        async with self._transaction() as cur:
            if until is not None:
                await cur.execute(sql.CHECKPOINT_EXISTS, {"thread_id": params["source"], "checkpoint_id": until})
                if not await cur.fetchone():
                    raise CheckpointNotFound(f"Thread {source_thread_id} has no checkpoint {until}.")
            for statement in sql.COPY_THREAD:
                await cur.execute(statement, params)

    async def akeep_latest(self, thread_id: str, keep: int) -> int:
        """Async `DurakitSaver.keep_latest`."""
        if keep < 1:
            raise ValueError("keep must be at least 1")
        params = {"thread_id": str(thread_id), "keep": keep}
        async with self._transaction() as cur:
            await cur.execute(sql.USES_DELTA_CHANNEL, params)
            if (await cur.fetchone())["exists"]:
                raise HistoryNeeded(f"Thread {thread_id} uses a DeltaChannel, whose values are rebuilt from its history.")
            removed = 0
            for statement in sql.KEEP_LATEST:
                await cur.execute(statement, params)
                if statement is sql.KEEP_LATEST[1]:
                    removed = cur.rowcount
        return removed
