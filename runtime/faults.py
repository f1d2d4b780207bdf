"""Fault injection for recovery tests: DURAKIT_FAULT=NODE:POINT makes the process
SIGKILL itself at that point of that node; DURAKIT_FAULT=NODE:POINT:stop freezes it
there instead (SIGSTOP, until someone sends SIGCONT), for the tests of a process that
wakes after another one took its thread over.

POINT is `before` (the node starts), `after_effect` (an outside system has applied a
side effect but the ledger has not recorded it yet), `after` (the node has returned,
nothing of it is saved yet) or `after_writes` (the node's output is saved as pending
writes, the next checkpoint is not). NODE `__settle__` with POINT `before` is the moment
a run has saved its last checkpoint and is about to write where the thread stands into
the registry.
"""

from __future__ import annotations

import os
import signal
import sys

from durakit.errors import InvalidInput

POINTS = ("before", "after_effect", "after", "after_writes")
ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


def configured() -> tuple[str, str, str] | None:
    """The (node, point, action) named by DURAKIT_FAULT, or None; a malformed value is refused."""
    value = os.environ.get("DURAKIT_FAULT", "").strip()
    if not value:
        return None
    spec, action = value, "kill"
    head, _, last = value.rpartition(":")
    if last in ACTIONS:
        spec, action = head, last
    node, _, point = spec.rpartition(":")
    if not node or point not in POINTS:
        raise InvalidInput(
            f"DURAKIT_FAULT must be NODE:POINT (or NODE:POINT:stop) with POINT one of {', '.join(POINTS)}, "
            f"not {value!r}."
        )
    return node, point, action


def maybe_kill(node: str, point: str) -> None:
    """SIGKILL (or freeze) this process if DURAKIT_FAULT names this node and point."""
    fault = configured()
    if fault is not None and fault[:2] == (node, point):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), ACTIONS[fault[2]])
