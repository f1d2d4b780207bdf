"""Steps per second with the async savers: many threads of the 10-node graph of
bench.steps run at once on one event loop, at concurrency 1, 20 and 100, for
durakit's async saver, stock AsyncPostgresSaver (both over the same kind of pool) and
InMemorySaver, on one scratch database in one run.

    python -m bench.throughput                 # DURAKIT_DATABASE_URL, or the embedded PostgreSQL
    python -m bench.throughput --threads 300

Stock serialises every call of a saver behind one asyncio lock; durakit's saver sends
each call on its own pooled connection, so concurrent threads overlap their commits.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from bench.steps import NODES, build, scratch_database
from durakit.checkpointers import async_postgres_saver, open_async_pool

CONCURRENCY = (1, 20, 100)


async def steps_per_second(compiled: Any, threads: int, concurrency: int) -> float:
    """Runs `threads` fresh threads, at most `concurrency` at once, durability sync."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            config = {"configurable": {"thread_id": f"bench-{uuid.uuid4().hex}"}}
            await compiled.ainvoke({"counter": 0, "note": "hello", "items": []}, config, durability="sync")

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(threads)))
    return threads * NODES / (time.perf_counter() - began)


async def measure(url: str, threads: int, pool_size: int) -> dict[tuple[str, int], float]:
    graph = build()
    results: dict[tuple[str, int], float] = {}
    async with await open_async_pool(url, max_size=pool_size, checked=False) as pool:
        savers = {
            "InMemorySaver": lambda: InMemorySaver(),
            "stock AsyncPostgresSaver": lambda: AsyncPostgresSaver(pool),
            "durakit async saver": lambda: async_postgres_saver(pool),
        }
        for concurrency in CONCURRENCY:
            for name, make in savers.items():
                compiled = graph.compile(checkpointer=make())
                await steps_per_second(compiled, min(threads, 20), concurrency)  # warm up
                results[(name, concurrency)] = await steps_per_second(compiled, threads, concurrency)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=200, help="threads per configuration")
    parser.add_argument("--pool-size", type=int, default=20, help="connections in the async pool")
    args = parser.parse_args(argv)
    with scratch_database() as (url, display):
        results = asyncio.run(measure(url, args.threads, args.pool_size))
    print(f"steps/s, {NODES}-node graph, durability sync, {args.threads} threads per row, "
          f"pool of {args.pool_size}, on {display}")
    print(f"{'saver':<26}{'concurrency':>12}{'steps/s':>10}{'vs stock':>10}")
    for (name, concurrency), value in results.items():
        stock = results[("stock AsyncPostgresSaver", concurrency)]
        print(f"{name:<26}{concurrency:>12}{value:>10.0f}{value / stock:>10.2f}")


if __name__ == "__main__":
    main()
