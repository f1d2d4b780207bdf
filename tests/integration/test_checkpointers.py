"""The saver factory: sync and async savers over pools share one set of tables."""

from __future__ import annotations

import asyncio
from typing import TypedDict

from langgraph.graph import END, START, StateGraph
from psycopg.rows import dict_row

from durakit.checkpointers import (
    async_postgres_saver,
    connection_kwargs,
    open_async_pool,
    open_pool,
    postgres_saver,
)
from tests.conftest import unique


class Counter(TypedDict):
    count: int


def counting_graph() -> StateGraph:
    builder = StateGraph(Counter)
    builder.add_node("increment", lambda state: {"count": state["count"] + 1})
    builder.add_edge(START, "increment")
    builder.add_edge("increment", END)
    return builder


def test_connection_settings_the_saver_needs():
    direct = connection_kwargs()
    assert (direct["autocommit"], direct["row_factory"], direct["prepare_threshold"]) == (True, dict_row, 0)
    assert connection_kwargs(transaction_pooler=True)["prepare_threshold"] is None


def test_async_saver_reads_what_the_sync_saver_wrote_and_the_reverse(test_database):
    first, second = unique("sync-thread"), unique("async-thread")
    with open_pool(test_database.url, max_size=2) as pool:
        sync_graph = counting_graph().compile(checkpointer=postgres_saver(pool))
        assert sync_graph.invoke({"count": 1}, {"configurable": {"thread_id": first}}, durability="sync") == {"count": 2}

        async def round_trip() -> tuple[int, int]:
            async with await open_async_pool(test_database.url, max_size=2, transaction_pooler=True) as apool:
                async_graph = counting_graph().compile(checkpointer=async_postgres_saver(apool))
                seen = await async_graph.aget_state({"configurable": {"thread_id": first}})
                done = await async_graph.ainvoke({"count": 10}, {"configurable": {"thread_id": second}}, durability="sync")
                return seen.values["count"], done["count"]

        assert asyncio.run(round_trip()) == (2, 11)
        assert sync_graph.get_state({"configurable": {"thread_id": second}}).values == {"count": 11}
