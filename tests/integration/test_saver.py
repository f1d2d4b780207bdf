"""durakit's saver against the real database: LangGraph's conformance suite, the
round trips a step costs, and stock savers reading what it writes (and the reverse)."""

from __future__ import annotations

import asyncio
import operator
import threading
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict

import psycopg
import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph

from durakit.checkpointers import async_postgres_saver, open_async_pool, open_pool, postgres_saver
from durakit.errors import CheckpointNotFound, HistoryNeeded
from durakit.state import MessageLog
from tests.conftest import unique

ALL_EIGHT = {"put", "put_writes", "get_tuple", "list", "delete_thread", "delete_for_runs", "copy_thread", "prune"}


def conformance(url: str, make_saver: Any) -> dict[str, bool | None]:
    """Runs langgraph-checkpoint-conformance; capability -> passed (None: not offered)."""

    async def run() -> dict[str, bool | None]:
        async with await open_async_pool(url, max_size=4) as pool:

            @checkpointer_test(name=make_saver.__name__)
            async def saver() -> AsyncIterator[BaseCheckpointSaver]:
                yield make_saver(pool)

            report = await validate(saver)
        failures = {name: result.failures for name, result in report.results.items() if result.failures}
        assert not failures or make_saver is AsyncPostgresSaver, failures
        return {name: result.passed for name, result in report.results.items()}

    return asyncio.run(run())


def test_durakit_saver_passes_all_eight_conformance_capabilities(test_database):
    results = conformance(test_database.url, async_postgres_saver)
    assert {name for name, passed in results.items() if passed} == ALL_EIGHT


def test_stock_saver_passes_six_of_them_on_the_same_database(test_database):
    results = conformance(test_database.url, AsyncPostgresSaver)
    passed = {name for name, ok in results.items() if ok}
    assert passed == ALL_EIGHT - {"delete_for_runs", "copy_thread"}


class Chat(TypedDict):
    turn: int
    customer: str
    messages: Annotated[list[str], operator.add]


def chat_graph(turns: int = 5) -> StateGraph:
    graph = StateGraph(Chat)
    names = [f"turn_{n}" for n in range(turns)]
    for name in names:
        graph.add_node(name, lambda state: {"turn": state["turn"] + 1, "messages": [f"message {state['turn']}"]})
    graph.add_edge(START, names[0])
    for first, second in zip(names, names[1:], strict=False):
        graph.add_edge(first, second)
    graph.add_edge(names[-1], END)
    return graph


def start(thread_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"turn": 0, "customer": "Ada", "messages": []}, {"configurable": {"thread_id": thread_id}}


def test_stock_savers_read_what_durakit_writes_and_the_reverse(test_database):
    ours, theirs = unique("ours"), unique("theirs")
    with open_pool(test_database.url) as pool:
        durakit_graph = chat_graph().compile(checkpointer=postgres_saver(pool))
        stock_graph = chat_graph().compile(checkpointer=PostgresSaver(pool))
        durakit_graph.invoke(*start(ours), durability="sync")
        stock_graph.invoke(*start(theirs), durability="sync")
        for thread_id in (ours, theirs):
            config = start(thread_id)[1]
            histories = [
                [(s.values, s.next, s.metadata["step"]) for s in graph.get_state_history(config)]
                for graph in (durakit_graph, stock_graph)
            ]
            assert histories[0] == histories[1]
            assert len(histories[0]) == 7  # input, five turns, and the empty start
            assert histories[0][0][0]["messages"] == [f"message {n}" for n in range(5)]


def statements_per_call(saver: BaseCheckpointSaver, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Runs a five-turn chat on `saver` and returns (method, statements it sent) per
    put/put_writes call; an executemany counts one statement per row."""
    calls: list[tuple[str, int]] = []
    local = threading.local()
    real_execute, real_executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany

    def execute(self: psycopg.Cursor, query: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(local, "sent", None) is not None and query:  # "" is the pool's liveness check
            local.sent += 1
        return real_execute(self, query, *args, **kwargs)

    def executemany(self: psycopg.Cursor, query: Any, params_seq: Any, **kwargs: Any) -> Any:
        params_seq = list(params_seq)
        if getattr(local, "sent", None) is not None:
            local.sent += len(params_seq)
        return real_executemany(self, query, params_seq, **kwargs)

    def traced(name: str, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            local.sent = 0
            try:
                return method(*args, **kwargs)
            finally:
                calls.append((name, local.sent))
                local.sent = None

        return call

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    monkeypatch.setattr(psycopg.Cursor, "executemany", executemany)
    monkeypatch.setattr(saver, "put", traced("put", saver.put))
    monkeypatch.setattr(saver, "put_writes", traced("put_writes", saver.put_writes))
    chat_graph().compile(checkpointer=saver).invoke(*start(unique("count")), durability="sync")
    return calls


def test_a_durable_step_costs_one_statement_per_checkpoint_and_one_per_task(test_database, monkeypatch):
    """Stock sends a statement (each its own commit) per blob and per write; durakit one
    for a checkpoint with its blobs and one for a task's writes."""
    with open_pool(test_database.url) as pool:
        ours = statements_per_call(postgres_saver(pool), monkeypatch)
        stock = statements_per_call(PostgresSaver(pool), monkeypatch)
    # 7 checkpoints (the empty start, the input, five turns) and 6 tasks' writes (input and turns)
    assert sorted(ours) == [("put", 1)] * 7 + [("put_writes", 1)] * 6
    assert sum(n for _, n in stock) > sum(n for _, n in ours) + 10


def test_calls_over_a_pool_run_in_parallel(test_database):
    """Stock takes one lock per saver; durakit's saver lets a slow call and a quick one
    overlap on two pooled connections."""
    thread_id = unique("parallel")
    with open_pool(test_database.url, max_size=3) as pool:
        saver = postgres_saver(pool)
        chat_graph(turns=1).compile(checkpointer=saver).invoke(*start(thread_id), durability="sync")
        config = saver.get_tuple(start(thread_id)[1]).config

        def slow_call() -> None:
            with saver._cursor() as cur:
                cur.execute("SELECT pg_sleep(1)")

        sleeper = threading.Thread(target=slow_call)
        sleeper.start()
        time.sleep(0.2)
        began = time.perf_counter()
        assert saver.get_tuple(config) is not None
        waited = time.perf_counter() - began
        sleeper.join()
    assert waited < 0.5


def test_copy_thread_up_to_a_checkpoint_is_a_fork_that_runs_on(test_database):
    source, fork = unique("source"), unique("fork")
    with open_pool(test_database.url) as pool:
        saver = postgres_saver(pool)
        graph = chat_graph().compile(checkpointer=saver)
        graph.invoke(*start(source), durability="sync")
        history = list(graph.get_state_history(start(source)[1]))
        after_two_turns = next(s for s in history if s.values.get("turn") == 2)
        saver.copy_thread(source, fork, until=after_two_turns.config["configurable"]["checkpoint_id"])

        copied = graph.get_state(start(fork)[1])
        assert copied.values["messages"] == ["message 0", "message 1"] and copied.next == ("turn_2",)
        assert graph.invoke(None, start(fork)[1], durability="sync")["messages"] == [f"message {n}" for n in range(5)]
        assert len(list(graph.get_state_history(start(source)[1]))) == len(history)  # source untouched
        with pytest.raises(CheckpointNotFound):
            saver.copy_thread(source, unique("nowhere"), until="no-such-checkpoint")


def test_keep_latest_keeps_the_newest_checkpoints_readable(test_database):
    thread_id, other = unique("keep"), unique("other")
    with open_pool(test_database.url) as pool:
        saver = postgres_saver(pool)
        graph = chat_graph().compile(checkpointer=saver)
        for each in (thread_id, other):
            graph.invoke(*start(each), durability="sync")
        before = [s.values for s in graph.get_state_history(start(thread_id)[1])]

        assert saver.keep_latest(thread_id, 3) == 4
        after = list(graph.get_state_history(start(thread_id)[1]))
        assert [s.values for s in after] == before[:3]
        assert after[-1].parent_config is None
        assert len(list(graph.get_state_history(start(other)[1]))) == 7
        with pool.connection() as conn:
            orphans = conn.execute(
                "SELECT count(*) FROM checkpoint_writes w WHERE thread_id = %s AND NOT EXISTS "
                "(SELECT 1 FROM checkpoints c WHERE c.thread_id = w.thread_id AND c.checkpoint_id = w.checkpoint_id)",
                (thread_id,),
            ).fetchone()["count"]
        assert orphans == 0


class LoggedChat(TypedDict):
    turn: int
    messages: MessageLog


def test_a_message_log_stores_each_message_once_and_every_checkpoint_reads_back(test_database):
    """A plain list is saved whole at every step; a MessageLog saves each new message once."""
    from bench.storage import THREAD_BYTES_SQL, conversation, message

    steps, stored = 60, {}
    with open_pool(test_database.url) as pool:
        saver = postgres_saver(pool)
        for name, state_type in (("list", Chat), ("log", LoggedChat)):
            graph = conversation(state_type, steps).compile(checkpointer=saver)
            config = {"configurable": {"thread_id": unique(name)}, "recursion_limit": steps + 10}
            graph.invoke({"turn": 0, "messages": []}, config, durability="sync")
            history = list(graph.get_state_history(config))
            assert len(history) == steps + 2  # the empty start, the input, one per answer
            assert all(len(s.values.get("messages", [])) == s.values.get("turn", 0) for s in history)
            assert history[0].values["messages"][-1] == message(steps - 1)
            with pool.connection() as conn:
                stored[name] = conn.execute(THREAD_BYTES_SQL, {"t": config["configurable"]["thread_id"]}).fetchone()["bytes"]
        assert stored["log"] < stored["list"] / 5
        with pytest.raises(HistoryNeeded):
            saver.keep_latest(config["configurable"]["thread_id"], 1)


def test_repeated_special_writes_keep_the_last_as_stock_does(test_database):
    """Two writes to one special channel (here: two errors) in one call: stock saves
    them one statement at a time and keeps the last; so does durakit's one statement."""
    thread_id = unique("special")
    with open_pool(test_database.url) as pool:
        for saver in (postgres_saver(pool), PostgresSaver(pool)):
            config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": "c-1"}}
            saver.put_writes(config, [("__error__", "first"), ("__error__", "last")], "task-1")
            with pool.connection() as conn:
                saved = conn.execute("SELECT blob FROM checkpoint_writes WHERE thread_id = %s", (thread_id,)).fetchall()
                conn.execute("DELETE FROM checkpoint_writes WHERE thread_id = %s", (thread_id,))
            assert [saver.serde.loads_typed(("msgpack", bytes(row["blob"]))) for row in saved] == ["last"]
