"""SIGKILL a real `durakit` process at every node and fault point of the refund graph,
then finish the thread from a new process: every side effect happens exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from durakit.graphs.refund import TEMPLATE as REFUND
from tests.conftest import durakit, side_effect_counts

pytestmark = pytest.mark.crash

KILLED = -signal.SIGKILL
EFFECT_NODES = {"request_approval", "issue_refund", "sync_crm", "notify_customer", "write_audit"}
NODES = [name for name in REFUND.builder.nodes]
CASES = [(node, point) for node in NODES for point in ("before", "after_effect", "after")
         if point != "after_effect" or node in EFFECT_NODES]

EXACTLY_ONCE = {"refunds": 1, "crm_notes": 1, "customer_emails": 1, "approval_requests": 1, "audit_records": 1}


def test_the_matrix_covers_every_node_of_the_refund_graph():
    assert set(NODES) == {
        "load_order", "check_eligibility", "request_approval", "await_approval",
        "issue_refund", "sync_crm", "notify_customer", "write_audit",
    }
    assert len(CASES) == 2 * len(NODES) + len(EFFECT_NODES)


@pytest.mark.parametrize(("node", "point"), CASES, ids=[f"{n}:{p}" for n, p in CASES])
def test_killed_at_every_point_resumes_and_acts_exactly_once(make_order, conn, node, point):
    order_id = make_order(30000)
    email = f"{order_id.lower()}@example.com"
    request = json.dumps({"order_id": order_id, "amount": "250.00", "reason": "arrived broken"})
    thread_id = f"refund-{order_id}"
    fault = {"DURAKIT_FAULT": f"{node}:{point}"}

    # The approval path runs every node. The fault lands either in the first process
    # (before the question) or in the one that carries out the answer.
    first = durakit("run", "refund", "--input", request, env=fault)
    if first.returncode == KILLED:
        killed_in = "run"
    else:
        assert first.returncode == 0, first.stderr
        second = durakit("approve", thread_id, "--decision", "approve", "--by", "dana", env=fault)
        assert second.returncode == KILLED, f"{node}:{point} never fired: {second.stdout} {second.stderr}"
        killed_in = "approve"

    assert conn.execute("SELECT status FROM durakit_threads WHERE thread_id = %s", (thread_id,)).fetchone()["status"] == "running"

    recovered = durakit("recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    report = json.loads(recovered.stdout)
    view = next(v for v in report["resumed"] if v["thread_id"] == thread_id)
    if killed_in == "run" and view["status"] == "waiting":
        answered = durakit("approve", thread_id, "--decision", "approve", "--by", "dana", "--json")
        assert answered.returncode == 0, answered.stderr
        view = json.loads(answered.stdout)

    assert view["status"] == "completed", view
    assert view["result"]["outcome"] == "refunded"
    assert side_effect_counts(conn, order_id, email) == EXACTLY_ONCE
    decisions = conn.execute("SELECT count(*) FROM durakit_decisions WHERE thread_id = %s", (thread_id,)).fetchone()
    assert decisions["count"] == 1


def test_a_run_killed_before_its_first_checkpoint_is_completed_by_recover(make_order, conn):
    order_id = make_order(30000)
    thread_id = f"refund-{order_id}"
    request = json.dumps({"order_id": order_id, "amount": "12.00", "reason": "late"})
    child = durakit("run", "refund", "--input", request, env={"DURAKIT_FAULT": "__start__:before"})
    assert child.returncode == KILLED
    assert conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = %s", (thread_id,)).fetchone()["count"] == 0

    status = durakit("status", thread_id, "--json")
    assert json.loads(status.stdout)["stale"] is True

    recovered = durakit("recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    view = next(v for v in json.loads(recovered.stdout)["resumed"] if v["thread_id"] == thread_id)
    assert view["status"] == "completed" and view["result"]["outcome"] == "refunded"
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 1


def test_two_processes_resuming_one_thread_at_once_one_advances_the_other_exits_4(make_order, conn):
    order_id = make_order(30000)
    thread_id = f"refund-{order_id}"
    request = json.dumps({"order_id": order_id, "amount": "12.00", "reason": "late"})
    assert durakit("run", "refund", "--input", request, env={"DURAKIT_FAULT": "issue_refund:before"}).returncode == KILLED

    # Slow sandbox calls keep the winner holding the thread for seconds, far longer
    # than the two processes' start-up skew.
    env = {**os.environ, "DURAKIT_SANDBOX_LATENCY_MS": "1500"}
    racers = [
        subprocess.Popen([sys.executable, "-m", "durakit", "resume", thread_id], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outcomes = sorted((proc.wait(timeout=120), proc.stderr.read()) for proc in racers)
    assert [code for code, _ in outcomes] == [0, 4], outcomes
    assert "another process" in outcomes[1][1]
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 1
    assert conn.execute("SELECT status FROM durakit_threads WHERE thread_id = %s", (thread_id,)).fetchone()["status"] == "completed"


def test_a_live_run_is_not_taken_over_by_recover(make_order, conn):
    order_id = make_order(30000)
    thread_id = f"refund-{order_id}"
    request = json.dumps({"order_id": order_id, "amount": "12.00", "reason": "late"})
    slow = subprocess.Popen(
        [sys.executable, "-m", "durakit", "run", "refund", "--input", request],
        env={**os.environ, "DURAKIT_SANDBOX_LATENCY_MS": "700"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Wait until the slow run has registered its thread and is inside the graph.
        row = None
        for _ in range(400):
            row = conn.execute("SELECT status FROM durakit_threads WHERE thread_id = %s", (thread_id,)).fetchone()
            if row:
                break
            time.sleep(0.05)
        assert row is not None and row["status"] == "running", "the slow run never registered its thread"
        report = json.loads(durakit("recover", "--json").stdout)
        assert thread_id not in [v["thread_id"] for v in report["resumed"]]
    finally:
        assert slow.wait(timeout=120) == 0
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 1
