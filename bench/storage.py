"""Bytes on disk per thread: a 200-step conversation whose state carries an append-only
message list (1 KB per message), for each saver and list channel, on one scratch
database in one run, as a multiple of the logical size of the final state.

    python -m bench.storage                # DURAKIT_DATABASE_URL, or the embedded PostgreSQL
    python -m bench.storage --steps 100

A plain `operator.add` list stores the whole list again at every step (quadratic); a
`DeltaChannel` list (durakit.state.MessageLog) stores each step's new messages once,
plus a full snapshot every `snapshot_frequency` updates. Every checkpoint of every
thread is read back and checked before a figure is printed.
"""

from __future__ import annotations

import argparse
import operator
import random
import string
import uuid
from typing import Annotated, Any, TypedDict

from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph

from bench.steps import scratch_database
from durakit.checkpointers import open_pool, postgres_saver
from durakit.state import MessageLog, append_messages

MESSAGE_BYTES = 1000

THREAD_BYTES_SQL = """
SELECT (SELECT coalesce(sum(pg_column_size(c.*)), 0) FROM checkpoints c WHERE thread_id = %(t)s)
     + (SELECT coalesce(sum(pg_column_size(b.*)), 0) FROM checkpoint_blobs b WHERE thread_id = %(t)s)
     + (SELECT coalesce(sum(pg_column_size(w.*)), 0) FROM checkpoint_writes w WHERE thread_id = %(t)s) AS bytes
"""


class PlainChat(TypedDict):
    turn: int
    messages: Annotated[list[str], operator.add]


class DeltaChat(TypedDict):
    turn: int
    messages: MessageLog


def delta_chat(snapshot_frequency: int) -> type:
    messages = Annotated[list[str], DeltaChannel(append_messages, snapshot_frequency=snapshot_frequency)]
    return TypedDict("Chat", {"turn": int, "messages": messages})  # type: ignore[operator]


def message(turn: int) -> str:
    """A 1 KB message of random letters: real text compresses a little, this barely does,
    so PostgreSQL's compression of large values does not flatter any saver."""
    return "".join(random.Random(turn).choices(string.ascii_letters + string.digits + " .,", k=MESSAGE_BYTES))


def conversation(state_type: type, steps: int) -> StateGraph:
    """One node that answers, `steps` times: each answer is a new 1 KB message."""

    def reply(state: dict[str, Any]) -> dict[str, Any]:
        return {"turn": state["turn"] + 1, "messages": [message(state["turn"])]}

    graph = StateGraph(state_type)
    graph.add_node("reply", reply)
    graph.add_edge(START, "reply")
    graph.add_conditional_edges("reply", lambda state: END if state["turn"] >= steps else "reply")
    return graph


def run_thread(saver: Any, state_type: type, steps: int) -> tuple[str, int]:
    """Runs one conversation; checks every checkpoint reads back; returns the thread id
    and the logical size of its final state."""
    graph = conversation(state_type, steps).compile(checkpointer=saver)
    config = {"configurable": {"thread_id": f"storage-{uuid.uuid4().hex}"}, "recursion_limit": steps + 10}
    final = graph.invoke({"turn": 0, "messages": []}, config, durability="sync")
    history = list(graph.get_state_history(config))
    for snapshot in history:
        turn = snapshot.values.get("turn", 0)
        assert len(snapshot.values.get("messages", [])) == turn, "a checkpoint did not read back"
    assert len(final["messages"]) == steps
    return config["configurable"]["thread_id"], len(JsonPlusSerializer().dumps_typed(final)[1])


def in_memory_bytes(saver: InMemorySaver) -> int:
    """What InMemorySaver holds, serialized, for comparison."""
    total = 0
    for namespaces in saver.storage.values():
        for checkpoints in namespaces.values():
            for (_, checkpoint), (_, metadata), _ in checkpoints.values():
                total += len(checkpoint) + len(metadata)
    total += sum(len(blob) for (_, blob) in saver.blobs.values() if blob)
    total += sum(len(value[2][1]) for writes in saver.writes.values() for value in writes.values())
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="messages in the conversation")
    args = parser.parse_args(argv)

    rows: list[tuple[str, str, int, int]] = []
    with scratch_database() as (url, display):
        with open_pool(url) as pool:

            def on_disk(name: str, channel: str, saver: Any, state_type: type) -> None:
                thread_id, logical = run_thread(saver, state_type, args.steps)
                with pool.connection() as conn:
                    rows.append((name, channel, conn.execute(THREAD_BYTES_SQL, {"t": thread_id}).fetchone()["bytes"], logical))

            on_disk("stock PostgresSaver", "list", PostgresSaver(pool), PlainChat)
            on_disk("durakit saver", "list", postgres_saver(pool), PlainChat)
            on_disk("stock PostgresSaver", "MessageLog", PostgresSaver(pool), DeltaChat)
            on_disk("durakit saver", "MessageLog", postgres_saver(pool), DeltaChat)
            for frequency in (100,):  # LangGraph's default snapshot frequency
                on_disk("durakit saver", f"DeltaChannel/{frequency}", postgres_saver(pool), delta_chat(frequency))
        for state_type, channel in ((PlainChat, "list"), (DeltaChat, "MessageLog")):
            memory = InMemorySaver()
            _, logical = run_thread(memory, state_type, args.steps)
            rows.append(("InMemorySaver", channel, in_memory_bytes(memory), logical))

    print(f"bytes per thread after {args.steps} steps of {MESSAGE_BYTES}-byte messages, on {display}")
    print("(rows of checkpoints, checkpoint_blobs and checkpoint_writes, pg_column_size; indexes not counted)")
    stock = next(b for name, channel, b, _ in rows if name == "stock PostgresSaver" and channel == "list")
    print(f"{'saver':<22}{'message list':<18}{'bytes':>12}{'x logical':>11}{'vs stock list':>15}")
    for name, channel, stored, logical in rows:
        print(f"{name:<22}{channel:<18}{stored:>12,}{stored / logical:>11.1f}{stored / stock:>15.3f}")


if __name__ == "__main__":
    main()
