"""Typed state of the templates, one module each, plus channel types for your own.

`MessageLog` is the list type for anything a thread appends to and never rewrites (a
conversation, a trail of notes). A plain `Annotated[list, operator.add]` field is saved
whole at every checkpoint, so its storage grows with the square of its length; a
`MessageLog` saves each step's new items once, and a full copy every
`MESSAGE_LOG_SNAPSHOT_EVERY` updates so that reading a checkpoint replays at most that
many steps. (LangGraph's DeltaChannel, in beta in LangGraph 1.2.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from langgraph.channels.delta import DeltaChannel

MESSAGE_LOG_SNAPSHOT_EVERY = 1000


def append_messages(existing: list[Any], batches: Sequence[Any]) -> list[Any]:
    """DeltaChannel reducer: each write is a list of new items (or one item)."""
    merged = list(existing)
    for batch in batches:
        merged.extend(batch if isinstance(batch, list) else [batch])
    return merged


MessageLog = Annotated[list[Any], DeltaChannel(append_messages, snapshot_frequency=MESSAGE_LOG_SNAPSHOT_EVERY)]
