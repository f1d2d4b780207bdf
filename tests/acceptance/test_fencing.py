"""A worker that lost only its lock session must not write over the process that took its
thread over (issue 12, part 1).

The reproduction, with real processes: worker A advances a refund and is frozen (SIGSTOP,
by DURAKIT_FAULT=NODE:POINT:stop) at a known point; only its lock session is ended
(`pg_terminate_backend`, as an idle timeout in a proxy or a firewall would), its pool
sessions stay open. Worker B takes the thread over and brings it to its approval question.
Then A is woken (SIGCONT). Its next write — a checkpoint, a ledger record or a registry
update, by where it was frozen — must be refused by the lease fence, and A must write
nothing more: the thread's checkpoint chain stays a chain, and the person's approval goes
through and refunds once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.acceptance.test_workers import thread_is, wait_until, workers  # noqa: F401  (workers: a fixture)
from tests.conftest import durakit, durakit_json
from tests.scenarios import refund_effects, refund_setup

# Terminates the session holding the thread's advisory lock, and only that one.
END_LOCK_SESSION_SQL = """
SELECT pg_terminate_backend(l.pid) FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = ((hashtextextended('durakit.thread:' || %(thread_id)s, 0) >> 32) & 4294967295)
  AND l.objid::bigint = (hashtextextended('durakit.thread:' || %(thread_id)s, 0) & 4294967295)
"""

# Two checkpoints with the same parent: the chain forked, as a stale step saved late does.
FORKED_CHAIN_SQL = """
SELECT parent_checkpoint_id, count(*) AS children FROM checkpoints
WHERE thread_id = %s AND checkpoint_ns = '' AND parent_checkpoint_id IS NOT NULL
GROUP BY parent_checkpoint_id HAVING count(*) > 1
"""


def frozen(pid: int) -> bool:
    """True once the process is stopped (state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] in ("T", "t")


def end_lock_session(conn, thread_id: str) -> None:
    ended = conn.execute(END_LOCK_SESSION_SQL, {"thread_id": thread_id}).fetchall()
    assert len(ended) == 1 and ended[0]["pg_terminate_backend"], "no session held the thread's lock"


def progress_lines(log: str, thread_id: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith(("advance ", "fire_timer ")) and thread_id in line]


@pytest.mark.parametrize(
    "frozen_at",
    [
        "check_eligibility:after",  # wakes to save its writes and a checkpoint
        "request_approval:after_effect",  # wakes to record a ledger result
        "__settle__:before",  # wakes to write the registry
    ],
)
def test_a_worker_that_lost_its_lock_session_writes_nothing_when_it_wakes(runner, conn, workers, frozen_at):  # noqa: F811
    request, ids = refund_setup(runner)
    thread_id = runner.submit("refund", request).thread_id
    stale = workers(env={"DURAKIT_FAULT": f"{frozen_at}:stop"})
    wait_until(lambda: frozen(stale.process.pid), 60, f"worker A to freeze at {frozen_at}")
    end_lock_session(conn, thread_id)
    assert runner.status(thread_id).status == "running"

    # B hands back A's job once A has been silent for --stalled-after, and takes the thread on.
    taker = workers()
    wait_until(thread_is(runner, thread_id, "waiting", node="await_approval"), 60,
               "worker B to bring the refund to its approval question")
    assert progress_lines(taker.output(), thread_id), "worker B did not take the thread"
    if frozen_at == "__settle__:before":
        # The person answers before A wakes: A's late settle would put the thread back to waiting.
        code, answered, err = durakit_json("approve", thread_id, "--decision", "approve", "--by", "dana", "--wait")
        assert code == 0, err
        assert answered["status"] == "completed", answered
    stale_log_before = len(progress_lines(stale.output(), thread_id))

    os.kill(stale.process.pid, signal.SIGCONT)
    wait_until(lambda: len(progress_lines(stale.output(), thread_id)) > stale_log_before, 60,
               "worker A to finish its stale job")
    time.sleep(0.5)  # anything A would still write after its progress line would land by now

    assert conn.execute(FORKED_CHAIN_SQL, (thread_id,)).fetchall() == [], "a stale step was saved over B's"
    if frozen_at != "__settle__:before":
        code, answered, err = durakit_json("approve", thread_id, "--decision", "approve", "--by", "dana", "--wait")
        assert code == 0, err
        assert answered["status"] == "completed", answered
    view = runner.status(thread_id)
    assert view.status == "completed" and view.result["outcome"] == "refunded", view
    assert refund_effects(conn, ids)["refunds"] == 1
    assert conn.execute(
        "SELECT count(*) FROM sandbox_emails WHERE subject LIKE %s", (f"Refund approval needed:% order {ids['order']}",)
    ).fetchone()["count"] == 1
    done = durakit("pending", "--json")
    assert thread_id not in done.stdout, "the finished refund is listed as waiting again"
    assert json.loads(durakit("status", thread_id, "--json").stdout)["status"] == "completed"
