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

`crash_in_process(node, point)` is the same fault for a test in one process (used by
`durakit.testing`): there the point raises `SimulatedCrash` instead of killing anything.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

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


class SimulatedCrash(BaseException):
    """The process "died" at a fault point (`crash_in_process`). A BaseException, so that
    neither a node's retry policy nor LangGraph's error handling takes it for a failure
    of the node and records it: like SIGKILL, it leaves only what was already saved."""


@dataclass
class InProcessCrash:
    node: str
    point: str
    happened: bool = False  # once true, the "process" is dead: nothing it does may count


_in_process: ContextVar[InProcessCrash | None] = ContextVar("durakit_in_process_crash", default=None)


@contextmanager
def crash_in_process(node: str, point: str) -> Iterator[InProcessCrash]:
    """Within the block (and the threads LangGraph starts from it), the first time `node`
    reaches `point`, raise `SimulatedCrash` instead of going on."""
    if point not in POINTS:
        raise InvalidInput(f"A crash point must be one of {', '.join(POINTS)}, not {point!r}.")
    crash = InProcessCrash(node, point)
    token = _in_process.set(crash)
    try:
        yield crash
    finally:
        _in_process.reset(token)


def maybe_kill(node: str, point: str) -> None:
    """SIGKILL (or freeze) this process if DURAKIT_FAULT names this node and point; in a
    `crash_in_process` block that names them, raise `SimulatedCrash` instead."""
    crash = _in_process.get()
    if crash is not None and not crash.happened and (crash.node, crash.point) == (node, point):
        crash.happened = True
        raise SimulatedCrash(f"simulated crash at {node}:{point}")
    fault = configured()
    if fault is not None and fault[:2] == (node, point):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), ACTIONS[fault[2]])
