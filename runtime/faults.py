"""Fault injection for recovery tests: DURAKIT_FAULT=NODE:POINT makes the process
SIGKILL itself at that point of that node.

POINT is `before` (the node starts), `after_effect` (an outside system has applied a
side effect but the ledger has not recorded it yet), `after` (the node has returned,
nothing of it is saved yet) or `after_writes` (the node's output is saved as pending
writes, the next checkpoint is not).
"""

from __future__ import annotations

import os
import signal
import sys

from durakit.errors import InvalidInput

POINTS = ("before", "after_effect", "after", "after_writes")


def configured() -> tuple[str, str] | None:
    """The (node, point) named by DURAKIT_FAULT, or None; a malformed value is refused."""
    value = os.environ.get("DURAKIT_FAULT", "").strip()
    if not value:
        return None
    node, _, point = value.rpartition(":")
    if not node or point not in POINTS:
        raise InvalidInput(
            f"DURAKIT_FAULT must be NODE:POINT with POINT one of {', '.join(POINTS)}, not {value!r}."
        )
    return node, point


def maybe_kill(node: str, point: str) -> None:
    """SIGKILL this process if DURAKIT_FAULT names this node and point."""
    if configured() == (node, point):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
