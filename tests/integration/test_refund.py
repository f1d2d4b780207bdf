"""The refund template through the Python API, against a real PostgreSQL."""

from __future__ import annotations

import pytest
from langgraph.checkpoint.postgres import PostgresSaver

from durakit.errors import Conflict, InvalidInput, NotFound, ThreadBusy
from durakit.graphs.refund import TEMPLATE as REFUND
from durakit.runner import Runner
from durakit.state.refund import RefundSettings
from tests.conftest import side_effect_counts, unique


def refund(runner: Runner, order_id: str, amount: str, **extra: str):
    return runner.run("refund", {"order_id": order_id, "amount": amount, "reason": "arrived broken", **extra})


def test_small_low_risk_refund_completes_without_a_person(runner, make_order, conn):
    order_id = make_order(30000)
    view = refund(runner, order_id, "19.90")
    assert view.status == "completed"
    assert view.interrupt is None
    assert view.result["outcome"] == "refunded"
    assert view.result["approved_by"] is None
    counts = side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")
    assert counts == {"refunds": 1, "crm_notes": 1, "customer_emails": 1, "approval_requests": 0, "audit_records": 1}


def test_refund_above_the_limit_waits_then_approval_completes_it(runner, make_order, conn):
    order_id = make_order(30000)
    view = refund(runner, order_id, "250.00")
    assert view.status == "waiting"
    assert view.interrupt["decisions"] == ["approve", "reject"]
    assert view.interrupt["node"] == "await_approval"
    assert order_id in view.interrupt["question"]
    assert conn.execute("SELECT count(*) FROM sandbox_refunds WHERE order_id = %s", (order_id,)).fetchone()["count"] == 0
    assert view.thread_id in [pending.thread_id for pending in runner.pending(limit=1000)]

    done = runner.approve(view.thread_id, "approve", by="dana", note="fine")
    assert done.status == "completed"
    assert done.result == {**done.result, "outcome": "refunded", "approved_by": "dana"}
    counts = side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")
    assert counts == {"refunds": 1, "crm_notes": 1, "customer_emails": 1, "approval_requests": 1, "audit_records": 1}
    decision = conn.execute("SELECT * FROM durakit_decisions WHERE thread_id = %s", (view.thread_id,)).fetchone()
    assert (decision["decision"], decision["decided_by"], decision["note"]) == ("approve", "dana", "fine")
    assert decision["interrupt_id"] == view.interrupt["id"]


def test_threshold_is_configuration(test_database, make_order):
    order_id = make_order(30000)
    lenient = RefundSettings(auto_approve_limit="500")
    with Runner.open(template_settings={"refund": lenient}) as runner:
        # 120.00 is under half the order, so low risk: with a 500 limit no one is asked.
        assert refund(runner, order_id, "120.00").status == "completed"


def test_rejection_notifies_the_customer_and_refunds_nothing(runner, make_order, conn):
    order_id = make_order(30000)
    view = refund(runner, order_id, "250.00")
    done = runner.approve(view.thread_id, "reject", by="sam", note="outside policy")
    assert done.status == "completed"
    assert done.result["outcome"] == "rejected"
    counts = side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")
    assert counts == {"refunds": 0, "crm_notes": 0, "customer_emails": 1, "approval_requests": 1, "audit_records": 1}


@pytest.mark.parametrize(
    ("amount", "days_ago", "reason"),
    [("400.00", 3, "the amount exceeds what is left to refund on the order"), ("10.00", 90, "older than 30 days")],
)
def test_ineligible_refund_is_refused_with_reasons(runner, make_order, conn, amount, days_ago, reason):
    order_id = make_order(30000, days_ago=days_ago)
    view = refund(runner, order_id, amount)
    assert view.status == "completed"
    assert view.result["outcome"] == "ineligible"
    assert any(reason in text for text in view.result["reasons"])
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 0


def test_unknown_order_ends_ineligible_without_a_crash(runner):
    view = refund(runner, unique("NO-SUCH-ORDER"), "10.00")
    assert view.status == "completed"
    assert view.result["outcome"] == "ineligible"
    assert view.result["reasons"] == ["the order does not exist"]


def test_wrong_decision_is_refused_and_nothing_is_saved(runner, make_order, conn):
    view = refund(runner, make_order(30000), "250.00")
    checkpoints_before = conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = %s", (view.thread_id,)).fetchone()
    with pytest.raises(InvalidInput, match="choose one of: approve, reject"):
        runner.approve(view.thread_id, "maybe", by="dana")
    assert runner.status(view.thread_id).status == "waiting"
    assert conn.execute("SELECT count(*) FROM durakit_decisions WHERE thread_id = %s", (view.thread_id,)).fetchone()["count"] == 0
    assert conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = %s", (view.thread_id,)).fetchone() == checkpoints_before


def test_answer_the_node_refuses_is_withdrawn_and_the_thread_keeps_waiting(runner, make_order, conn):
    view = refund(runner, make_order(30000), "250.00")
    with pytest.raises(InvalidInput, match="by"):
        runner.approve(view.thread_id, "approve", by="x" * 101)  # ApprovalAnswer allows 100 characters
    again = runner.status(view.thread_id)
    assert again.status == "waiting" and again.interrupt["id"] == view.interrupt["id"]
    assert conn.execute("SELECT count(*) FROM durakit_decisions WHERE thread_id = %s", (view.thread_id,)).fetchone()["count"] == 0
    assert runner.approve(view.thread_id, "approve", by="dana").status == "completed"


def test_approving_a_thread_that_is_not_waiting_conflicts(runner, make_order):
    view = refund(runner, make_order(30000), "10.00")
    assert view.status == "completed"
    with pytest.raises(Conflict, match="not waiting"):
        runner.approve(view.thread_id, "approve", by="dana")


def test_second_approval_of_the_same_question_conflicts_and_refunds_once(runner, make_order, conn):
    order_id = make_order(30000)
    view = refund(runner, order_id, "250.00")
    runner.approve(view.thread_id, "approve", by="dana")
    with pytest.raises(Conflict):
        runner.approve(view.thread_id, "approve", by="kim")
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 1


def test_unknown_thread_and_template(runner):
    with pytest.raises(NotFound):
        runner.status("no-such-thread")
    with pytest.raises(NotFound):
        runner.approve("no-such-thread", "approve", by="dana")
    with pytest.raises(NotFound):
        runner.resume("no-such-thread")
    with pytest.raises(NotFound):
        runner.run("no-such-template", {})


def test_same_business_key_twice_reaches_one_thread(runner, make_order, conn):
    order_id = make_order(30000)
    ticket = unique("T")
    first = refund(runner, order_id, "10.00", ticket_id=ticket)
    second = refund(runner, order_id, "10.00", ticket_id=ticket)
    assert first.thread_id == second.thread_id == f"refund-{ticket}"
    assert conn.execute("SELECT count(*) FROM durakit_threads WHERE thread_id = %s", (first.thread_id,)).fetchone()["count"] == 1
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 1


def test_same_thread_id_with_a_different_request_conflicts(runner, make_order):
    order_id = make_order(30000)
    ticket = unique("T")
    refund(runner, order_id, "10.00", ticket_id=ticket)
    with pytest.raises(Conflict, match="different request"):
        refund(runner, order_id, "11.00", ticket_id=ticket)


def test_a_busy_thread_cannot_be_resumed_or_approved(runner, make_order, test_database):
    view = refund(runner, make_order(30000), "250.00")
    with Runner.open() as other_process_stand_in:
        with other_process_stand_in.locks.hold(view.thread_id):
            with pytest.raises(ThreadBusy):
                runner.approve(view.thread_id, "approve", by="dana")
            with pytest.raises(ThreadBusy):
                runner.resume(view.thread_id)
    assert runner.approve(view.thread_id, "approve", by="dana").status == "completed"


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[1, 2]",
        {"order_id": "ORD-1", "amount": "-5", "reason": "x"},
        {"order_id": "ORD-1", "amount": "1.234", "reason": "x"},
        {"order_id": "ORD 1; DROP TABLE durakit_threads", "amount": "5", "reason": "x"},
        {"order_id": "ORD-1", "amount": "5", "reason": "x", "surprise": True},
        {"order_id": "ORD-1", "amount": "5"},
    ],
)
def test_bad_input_is_refused_before_anything_is_written(runner, conn, bad):
    before = conn.execute("SELECT count(*) FROM durakit_threads").fetchone()["count"]
    with pytest.raises(InvalidInput):
        runner.run("refund", bad)
    assert conn.execute("SELECT count(*) FROM durakit_threads").fetchone()["count"] == before


@pytest.mark.parametrize("thread_id", ["", "has space", "quote'", "a/b", "x" * 200, "-leading-dash", "ñ"])
def test_bad_thread_ids_are_refused(runner, make_order, thread_id):
    with pytest.raises(InvalidInput, match="not a valid thread id"):
        runner.run("refund", {"order_id": make_order(), "amount": "5", "reason": "x"}, thread_id=thread_id)


def test_event_log_tells_the_story(runner, make_order):
    view = refund(runner, make_order(30000), "250.00")
    runner.approve(view.thread_id, "approve", by="dana")
    history = runner.history(view.thread_id)
    kinds = [event["kind"] for event in history.extra["events"]]
    assert kinds[0] == "run_started"
    assert "interrupted" in kinds and "decided" in kinds and "resumed" in kinds
    assert kinds[-1] == "completed"
    finished = [event["node"] for event in history.extra["events"] if event["kind"] == "node_finished"]
    assert finished == [
        "load_order", "check_eligibility", "request_approval",
        "await_approval", "issue_refund", "sync_crm", "notify_customer", "write_audit",
    ]
    assert history.extra["decisions"][0]["decided_by"] == "dana"
    assert len(history.extra["checkpoints"]) >= 9


def test_stock_postgres_saver_reads_the_kits_threads(runner, make_order, test_database, conn):
    view = refund(runner, make_order(30000), "250.00")
    runner.approve(view.thread_id, "approve", by="dana")
    migrations_before = conn.execute("SELECT count(*), max(v) FROM checkpoint_migrations").fetchone()
    with PostgresSaver.from_conn_string(test_database.url) as stock:
        stock.setup()  # must find nothing to do
        graph = REFUND.builder.compile(checkpointer=stock)
        state = graph.get_state({"configurable": {"thread_id": view.thread_id}})
        history = list(stock.list({"configurable": {"thread_id": view.thread_id}}))
    assert state.values["outcome"] == "refunded"
    assert state.values["approval"]["by"] == "dana"
    assert state.next == ()
    assert len(history) == len(runner.history(view.thread_id).extra["checkpoints"])
    assert conn.execute("SELECT count(*), max(v) FROM checkpoint_migrations").fetchone() == migrations_before
