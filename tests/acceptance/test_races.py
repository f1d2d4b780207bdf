"""Races between real processes: two answers to one question, an answer to a thread that
is mid-run elsewhere, and two `durakit recover` at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import CHILD_TIMEOUT_SECONDS, durakit, side_effect_counts

pytestmark = pytest.mark.crash

KILLED = -signal.SIGKILL


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "durakit", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = child.communicate(timeout=CHILD_TIMEOUT_SECONDS)
    return child.returncode, out, err


def refund_request(order_id: str, amount: str = "250.00") -> dict[str, str]:
    return {"order_id": order_id, "amount": amount, "reason": "arrived broken"}


def count(conn, sql: str, *params) -> int:
    return conn.execute(sql, params).fetchone()["count"]


def test_two_approvals_of_one_question_at_once_one_wins_one_refund(runner, make_order, conn):
    orders = [make_order(30000) for _ in range(3)]
    threads = [runner.run("refund", refund_request(order_id)).thread_id for order_id in orders]
    for order_id, thread_id in zip(orders, threads, strict=True):
        # Both processes start together; each needs about a second to start, then they meet at the lock.
        children = [start("approve", thread_id, "--decision", decision, "--by", by)
                    for decision, by in (("approve", "dana"), ("reject", "sam"))]
        results = [finish(child) for child in children]
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 4], results
        loser_err = next(err for code, _, err in results if code == 4)
        assert loser_err.startswith("durakit: ") and len(loser_err.strip().splitlines()) == 1
        winner = runner.status(thread_id)
        assert winner.status == "completed"
        decisions = conn.execute("SELECT decided_by, decision FROM durakit_decisions WHERE thread_id = %s",
                                 (thread_id,)).fetchall()
        assert len(decisions) == 1
        refunds = side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"]
        assert refunds == (1 if decisions[0]["decision"] == "approve" else 0)
        assert winner.result["outcome"] == ("refunded" if refunds else "rejected")


def test_answering_a_thread_that_is_mid_run_elsewhere_exits_4_and_loses_nothing(runner, make_order, conn):
    order_id = make_order(30000)
    thread_id = runner.run("refund", refund_request(order_id)).thread_id
    # The first answer runs slowly (every sandbox call takes 2.5 s, four calls) ...
    slow = start("approve", thread_id, "--decision", "approve", "--by", "dana",
                 env={"DURAKIT_SANDBOX_LATENCY_MS": "2500"})
    deadline = time.monotonic() + 30
    while not runner.engine.record(thread_id).lease_held:
        assert time.monotonic() < deadline and slow.poll() is None
        time.sleep(0.05)
    # ... and while it holds the thread, every other command that would advance it is refused.
    for args in (["approve", thread_id, "--decision", "reject", "--by", "sam"],
                 ["resume", thread_id],
                 ["run", "refund", "--input", json.dumps(refund_request(order_id))]):
        other = durakit(*args)
        assert other.returncode == 4, (args, other.stderr)
        assert len(other.stderr.strip().splitlines()) == 1 and "Traceback" not in other.stderr
    assert slow.poll() is None, "the slow run ended before the others were tried"
    code, out, err = finish(slow)
    assert code == 0, err
    view = runner.status(thread_id)
    assert (view.status, view.result["outcome"], view.result["approved_by"]) == ("completed", "refunded", "dana")
    assert count(conn, "SELECT count(*) FROM durakit_decisions WHERE thread_id = %s", thread_id) == 1
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 1


def test_two_recover_processes_at_once_resume_each_stale_thread_once(runner, make_order, conn):
    orders = [make_order(30000) for _ in range(6)]
    for order_id in orders:  # each run dies after billing refunded, before the ledger knew
        child = durakit("run", "refund", "--input", json.dumps(refund_request(order_id, "20.00")),
                        env={"DURAKIT_FAULT": "issue_refund:after_effect"})
        assert child.returncode == KILLED
    threads = {f"refund-{order_id}" for order_id in orders}
    for thread_id in threads:
        assert runner.wait_until_released(thread_id)

    # Each resume takes a while (sandbox calls of 0.3 s), so the two processes overlap.
    slow = {"DURAKIT_SANDBOX_LATENCY_MS": "300"}
    children = [start("recover", "--json", env=slow), start("recover", "--json", env=slow)]
    reports = []
    for child in children:
        code, out, err = finish(child)
        assert code == 0, err
        reports.append(json.loads(out))
    resumed = [{view["thread_id"] for view in report["resumed"]} & threads for report in reports]
    assert not resumed[0] & resumed[1], "a thread was resumed by both processes"
    assert resumed[0] | resumed[1] == threads
    assert resumed[0] and resumed[1], "one process did all the work: they did not race"
    for order_id in orders:
        assert runner.status(f"refund-{order_id}").status == "completed"
        assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 1
