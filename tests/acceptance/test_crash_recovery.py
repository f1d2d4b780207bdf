"""Crashes around the edges of a run: before the first checkpoint, two processes racing
for one thread, and recover meeting a live run. (Every node of every template is
crashed in test_crash_matrix.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import durakit, side_effect_counts

pytestmark = pytest.mark.crash

KILLED = -signal.SIGKILL


def test_a_run_killed_before_its_first_checkpoint_is_completed_by_recover(runner, make_order, conn):
    order_id = make_order(30000)
    thread_id = f"refund-{order_id}"
    request = json.dumps({"order_id": order_id, "amount": "12.00", "reason": "late"})
    child = durakit("run", "refund", "--input", request, env={"DURAKIT_FAULT": "__start__:before"})
    assert child.returncode == KILLED
    assert runner.wait_until_released(thread_id)
    assert conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = %s", (thread_id,)).fetchone()["count"] == 0

    status = durakit("status", thread_id, "--json")
    assert json.loads(status.stdout)["stale"] is True

    recovered = durakit("recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    view = next(v for v in json.loads(recovered.stdout)["resumed"] if v["thread_id"] == thread_id)
    assert view["status"] == "completed" and view["result"]["outcome"] == "refunded"
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 1


def test_two_processes_resuming_one_thread_at_once_one_advances_the_other_exits_4(runner, make_order, conn):
    order_id = make_order(30000)
    thread_id = f"refund-{order_id}"
    request = json.dumps({"order_id": order_id, "amount": "12.00", "reason": "late"})
    assert durakit("run", "refund", "--input", request, env={"DURAKIT_FAULT": "issue_refund:before"}).returncode == KILLED
    assert runner.wait_until_released(thread_id)

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
