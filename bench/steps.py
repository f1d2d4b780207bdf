"""Cost of a durable step: milliseconds per step of a 10-node linear graph whose state is
a small dict plus a list that grows by one item per step, for each saver and durability,
on one scratch database in one run, with ratios against stock `PostgresSaver`.

    python -m bench.steps                 # DURAKIT_DATABASE_URL, or the embedded PostgreSQL
    python -m bench.steps --runs 30

This is the baseline issue 5's faster saver is measured against: the kit's saver row is
today stock PostgresSaver plus durakit's fault hook.
"""

from __future__ import annotations

import argparse
import operator
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.graph import END, START, StateGraph

from durakit import db
from durakit.checkpointers import open_pool, postgres_saver
from durakit.settings import KitSettings

NODES = 10


class State(TypedDict):
    counter: int
    note: str
    items: Annotated[list[str], operator.add]


def build(nodes: int = NODES) -> StateGraph:
    graph = StateGraph(State)
    names = [f"step_{n}" for n in range(nodes)]
    for name in names:
        graph.add_node(name, lambda state: {"counter": state["counter"] + 1, "items": ["x" * 100]})
    graph.add_edge(START, names[0])
    for first, second in zip(names, names[1:], strict=False):
        graph.add_edge(first, second)
    graph.add_edge(names[-1], END)
    return graph


def ms_per_step(compiled: Any, durability: str | None, runs: int) -> float:
    """Median over `runs` fresh threads of wall time per node."""
    samples = []
    for _ in range(runs):
        config = {"configurable": {"thread_id": f"bench-{uuid.uuid4().hex}"}}
        began = time.perf_counter()
        kwargs = {"durability": durability} if durability else {}
        compiled.invoke({"counter": 0, "note": "hello", "items": []}, config, **kwargs)
        samples.append((time.perf_counter() - began) * 1000 / NODES)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.steps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="threads per configuration (median reported)")
    args = parser.parse_args(argv)

    settings = KitSettings.from_env()
    database = db.locate(settings)
    scratch = f"durakit_bench_{uuid.uuid4().hex[:8]}"
    with db.connect(database.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{scratch}"')
    url = with_dbname(database.url, scratch)
    try:
        db.upgrade(url)
        pool = open_pool(url)
        graph = build()
        rows: list[tuple[str, str, Callable[[], float]]] = [
            ("no checkpointer", "-", lambda: ms_per_step(graph.compile(), None, args.runs)),
            ("InMemorySaver", "sync", lambda: ms_per_step(graph.compile(checkpointer=InMemorySaver()), "sync", args.runs)),
        ]
        for durability in ("sync", "async", "exit"):
            rows.append(("stock PostgresSaver", durability,
                         lambda d=durability: ms_per_step(graph.compile(checkpointer=PostgresSaver(pool)), d, args.runs)))
            rows.append(("durakit saver", durability,
                         lambda d=durability: ms_per_step(graph.compile(checkpointer=postgres_saver(pool)), d, args.runs)))
        results = {(name, durability): measure() for name, durability, measure in rows}
        pool.close()
    finally:
        with db.connect(database.url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')

    print(f"ms per step, {NODES}-node graph, median of {args.runs} threads, on {database.display}")
    print(f"{'saver':<22}{'durability':<12}{'ms/step':>9}{'vs stock':>10}")
    for (name, durability), value in results.items():
        stock = results.get(("stock PostgresSaver", durability))
        ratio = f"{value / stock:.2f}" if stock else ""
        print(f"{name:<22}{durability:<12}{value:>9.3f}{ratio:>10}")


def with_dbname(url: str, dbname: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


if __name__ == "__main__":
    main()
