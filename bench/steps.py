"""Cost of a durable step: milliseconds per step of a 10-node linear graph whose state is
a small dict plus a list that grows by one item per step, for each saver and durability,
on one scratch database in one run, with ratios against stock `PostgresSaver`.

    python -m bench.steps                 # DURAKIT_DATABASE_URL, or the embedded PostgreSQL
    python -m bench.steps --runs 30

It also times a graph with the refund template's state and steps, and what the server
itself costs (a round trip; an INSERT and its commit), so the saver's share can be
told from PostgreSQL's.
"""

from __future__ import annotations

import argparse
import operator
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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


REFUND_STEPS: list[tuple[str, dict[str, Any]]] = [
    ("load_order", {"order": {"order_id": "ORD-42", "amount_cents": 25000, "customer_email": "ada@example.com",
                              "placed_at": "2026-11-01T10:00:00Z", "refunded_cents": 0}}),
    ("check_eligibility", {"eligibility": {"eligible": True, "reasons": []}}),
    ("assess_risk", {"risk": {"level": "low", "reasons": ["long-time customer", "first refund"]},
                     "route": "auto_approve"}),
    ("issue_refund", {"refund": {"refund_id": "RF-1", "amount_cents": 25000, "status": "succeeded"}}),
    ("sync_crm", {"crm_note": {"note_id": "N-1", "text": "Refunded 250.00: arrived broken"}}),
    ("notify_customer", {"notification": {"message_id": "M-1", "to": "ada@example.com"}}),
    ("write_audit", {"audit": {"record_id": "A-1"}, "outcome": "refunded"}),
]


def build_refund_shaped() -> StateGraph:
    """The refund template's state and step sequence (auto-approved), with nodes that
    return what its nodes return and call nothing: the saver's share of a refund."""
    from durakit.state.refund import RefundState

    graph = StateGraph(RefundState)
    names = [name for name, _ in REFUND_STEPS]
    for name, update in REFUND_STEPS:
        graph.add_node(name, lambda state, update=update: update)
    graph.add_edge(START, names[0])
    for first, second in zip(names, names[1:], strict=False):
        graph.add_edge(first, second)
    graph.add_edge(names[-1], END)
    return graph


REFUND_INPUT = {"order_id": "ORD-42", "amount_cents": 25000, "reason": "arrived broken", "ticket_id": "T-1001"}
TEN_NODE_INPUT = {"counter": 0, "note": "hello", "items": []}


def step_times(compiled: Any, durability: str | None, runs: int, graph_input: dict[str, Any] | None = None) -> list[float]:
    """Wall time per node, in ms, of each of `runs` fresh threads."""
    graph_input = graph_input or TEN_NODE_INPUT
    nodes = len(compiled.builder.nodes)
    samples = []
    for _ in range(runs):
        config = {"configurable": {"thread_id": f"bench-{uuid.uuid4().hex}"}}
        began = time.perf_counter()
        kwargs = {"durability": durability} if durability else {}
        compiled.invoke(dict(graph_input), config, **kwargs)
        samples.append((time.perf_counter() - began) * 1000 / nodes)
    return samples


def postgres_floor(url: str, repeats: int = 500) -> dict[str, float]:
    """What the server itself costs, in ms: a round trip, and a one-row INSERT with its
    commit (the disk's flush), on one connection."""
    with db.connect(url, autocommit=True, prepare_threshold=0) as conn:
        conn.execute("CREATE TEMPORARY TABLE floor_probe (x int)")
        conn.execute("CREATE TABLE IF NOT EXISTS durakit_floor_probe (x int)")
        timings = {}
        for label, statement in (("round trip", "SELECT 1"), ("INSERT + COMMIT", "INSERT INTO durakit_floor_probe VALUES (1)")):
            began = time.perf_counter()
            for _ in range(repeats):
                conn.execute(statement)
            timings[label] = (time.perf_counter() - began) * 1000 / repeats
        conn.execute("DROP TABLE durakit_floor_probe")
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.steps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60, help="threads per configuration (median reported)")
    parser.add_argument("--rounds", type=int, default=6, help="the configurations take turns this many times")
    args = parser.parse_args(argv)

    graphs = {f"{NODES}-node graph": (build(), TEN_NODE_INPUT), "refund-shaped graph": (build_refund_shaped(), REFUND_INPUT)}
    samples: dict[tuple[str, str, str], list[float]] = {}
    # One pool for every saver, as the runner gives its saver: no ping before each loan.
    with scratch_database() as (url, display), open_pool(url, checked=False) as pool:
        floor = postgres_floor(url)
        configurations: list[tuple[tuple[str, str, str], Any, str | None]] = []
        for label in graphs:
            configurations += [((label, "no checkpointer", "-"), lambda: None, None),
                               ((label, "InMemorySaver", "sync"), InMemorySaver, "sync")]
            for durability in ("sync", "async", "exit"):
                configurations += [((label, "stock PostgresSaver", durability), lambda: PostgresSaver(pool), durability),
                                   ((label, "durakit saver", durability), lambda: postgres_saver(pool), durability)]
        # Taking turns spreads the machine's slow moments (a busy disk) over every row.
        for _ in range(args.rounds):
            for key, make_saver, durability in configurations:
                graph, graph_input = graphs[key[0]]
                compiled = graph.compile(checkpointer=make_saver())
                samples.setdefault(key, []).extend(
                    step_times(compiled, durability, max(1, args.runs // args.rounds), graph_input))
    results = {key: statistics.median(values) for key, values in samples.items()}

    print(f"ms per step, median of {args.runs} threads per row in {args.rounds} turns, on {display}")
    print("PostgreSQL itself: " + ", ".join(f"{label} {ms:.3f} ms" for label, ms in floor.items()))
    print(f"{'graph':<21}{'saver':<22}{'durability':<12}{'ms/step':>9}{'vs stock':>10}")
    for (label, name, durability), value in results.items():
        stock = results.get((label, "stock PostgresSaver", durability))
        ratio = f"{value / stock:.2f}" if stock else ""
        print(f"{label:<21}{name:<22}{durability:<12}{value:>9.3f}{ratio:>10}")


@contextmanager
def scratch_database() -> Iterator[tuple[str, str]]:
    """A migrated scratch database on DURAKIT_DATABASE_URL's server (or the embedded
    PostgreSQL), dropped afterwards: yields its URL and the server's display name."""
    database = db.locate(KitSettings.from_env())
    scratch = f"durakit_bench_{uuid.uuid4().hex[:8]}"
    with db.connect(database.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{scratch}"')
    try:
        url = with_dbname(database.url, scratch)
        db.upgrade(url)
        yield url, database.display
    finally:
        with db.connect(database.url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


def with_dbname(url: str, dbname: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


if __name__ == "__main__":
    main()
