"""`durakit worker` outlives a database outage longer than procrastinate's own give-up
(issue 12 §2). Takes about 45 s: the outage must outlast the ~30 s after which
procrastinate's worker stopped and `durakit worker` exited 1.

The worker reaches the database through a proxy (tests/dbproxy.py) that the test cuts:
every connection closed, new ones refused, for OUTAGE_SECONDS. This process keeps its
own direct connection, so it submits work and watches the threads throughout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from durakit.runner import Runner
from tests.acceptance.test_workers import wait_until
from tests.conftest import side_effect_counts
from tests.dbproxy import DatabaseProxy

OUTAGE_SECONDS = 35
LOST = "Lost the database"
BACK = "The database is back"
REFUNDED_ONCE = {"refunds": 1, "crm_notes": 1, "customer_emails": 1, "approval_requests": 0, "audit_records": 1}

NODE_FINISHED_SQL = "SELECT count(*) AS n FROM durakit_events WHERE thread_id = %s AND kind = 'node_finished'"


def small_refund(runner: Runner, make_order) -> tuple[str, str]:
    """Submit a refund that completes without a person; returns (thread id, order id)."""
    order_id = make_order(30000)
    view = runner.submit("refund", {"order_id": order_id, "amount": "19.90", "reason": "arrived broken"})
    return view.thread_id, order_id


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_worker_outlives_a_35_second_outage_and_finishes_its_threads_once(
    test_database, runner, make_order, conn, tmp_path: Path
):
    log = tmp_path / "worker.log"
    with DatabaseProxy(test_database.url) as proxy, log.open("wb") as handle:
        env = {**os.environ, "DURAKIT_DATABASE_URL": proxy.url, "DURAKIT_SANDBOX_LATENCY_MS": "400"}
        worker = subprocess.Popen(
            [sys.executable, "-m", "durakit", "worker", "--concurrency", "2", "--poll-interval", "0.2",
             "--stalled-after", "2"],
            env=env, stdout=handle, stderr=subprocess.STDOUT,
        )
        output = log.read_text
        try:
            wait_until(lambda: output().startswith("durakit worker ") or worker.poll() is not None, 60,
                       "the worker to start")
            # A thread the worker is in the middle of when the database goes.
            midway, midway_order = small_refund(runner, make_order)
            wait_until(lambda: conn.execute(NODE_FINISHED_SQL, (midway,)).fetchone()["n"] > 0, 30,
                       "the worker to be midway through the first refund")
            proxy.cut()
            cut_at = time.monotonic()
            # A thread submitted while the database is away for the worker.
            during, during_order = small_refund(runner, make_order)
            while time.monotonic() - cut_at < OUTAGE_SECONDS:
                assert worker.poll() is None, f"the worker exited {worker.returncode} during the outage:\n{output()}"
                time.sleep(0.5)
            proxy.restore()
            after, after_order = small_refund(runner, make_order)

            def completed(thread_id: str) -> bool:
                assert worker.poll() is None, f"the worker exited {worker.returncode}:\n{output()}"
                return runner.status(thread_id).status == "completed"

            for thread_id in (midway, during, after):
                wait_until(lambda thread_id=thread_id: completed(thread_id), 60,
                           f"thread {thread_id} to complete after the outage")
            assert worker.poll() is None, f"the worker exited {worker.returncode}:\n{output()}"
            for order_id in (midway_order, during_order, after_order):
                assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com") == REFUNDED_ONCE
            text = output()
            notices = [LOST if line.startswith(LOST) else BACK for line in text.splitlines()
                       if line.startswith((LOST, BACK))]
            assert notices == [LOST, BACK], text  # once each, in that order (job error lines aside)
            assert "Traceback" not in text, text

            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0, output()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            print(f"--- worker (exit {worker.returncode}) ---\n{output()}")
