"""An answer is bound to the question it answers (issue 12, part 4).

A refund waits for approval; nobody answers, its deadline fires, and it waits on the
escalated second question. A person who read the first email and answers it late must be
refused (exit 4), not have the answer land on the second question. The deadline is moved to
now and fired in this process, as tests/integration/test_timers.py does.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from durakit.errors import Conflict, InvalidInput
from durakit.runner import Runner
from tests.conftest import durakit, durakit_json
from tests.scenarios import cancellation_setup

FIRST, SECOND = "approval:1", "approval:2"


def fire_deadline(runner: Runner, thread_id: str, name: str):
    runner.move_timer(thread_id, name, datetime.now(UTC))
    return runner.fire_timer(thread_id, name)


def email_body(conn, subject_like: str) -> str:
    rows = conn.execute("SELECT body FROM sandbox_emails WHERE subject LIKE %s", (subject_like,)).fetchall()
    assert len(rows) == 1, rows
    return rows[0]["body"]


def refunds(conn, order_id: str) -> int:
    return conn.execute("SELECT count(*) FROM sandbox_refunds WHERE order_id = %s", (order_id,)).fetchone()["count"]


def decisions(conn, thread_id: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT decision, decided_by FROM durakit_decisions WHERE thread_id = %s ORDER BY decided_at", (thread_id,)
    ).fetchall()
    return [(row["decision"], row["decided_by"]) for row in rows]


def escalated_refund(runner: Runner, make_order) -> tuple[str, str, str]:
    """A refund whose first approval question went unanswered until its deadline escalated
    it: (thread id, order id, the first question's interrupt id)."""
    order_id = make_order()
    view = runner.run("refund", {"order_id": order_id, "amount": "250.00", "reason": "broken"})
    assert view.status == "waiting" and view.question_id == FIRST
    escalated = fire_deadline(runner, view.thread_id, "approval_deadline:1")
    assert escalated.status == "waiting" and escalated.question_id == SECOND
    assert escalated.interrupt["id"] != view.interrupt["id"]
    return view.thread_id, order_id, view.interrupt["id"]


def test_a_late_answer_to_the_first_question_is_refused_and_the_current_one_is_answered(runner, conn, make_order):
    thread_id, order_id, first_interrupt = escalated_refund(runner, make_order)
    # Each email names the question it asks, in the command it tells its reader to run.
    assert f"durakit approve {thread_id} --question {FIRST} --decision approve|reject" in email_body(
        conn, f"Refund approval needed:% order {order_id}")
    assert f"durakit approve {thread_id} --question {SECOND} --decision approve|reject" in email_body(
        conn, f"Unanswered refund approval:% order {order_id}")

    for late in (FIRST, first_interrupt):  # by the email's id, or by LangGraph's interrupt id
        with pytest.raises(Conflict, match=f"no longer pending.*pending now is {SECOND}") as refused:
            runner.approve(thread_id, "approve", by="dana", question=late)
        assert "\n" not in str(refused.value)
    view = runner.status(thread_id)
    assert (view.status, view.question_id) == ("waiting", SECOND)
    assert refunds(conn, order_id) == 0
    assert decisions(conn, thread_id) == [("escalate", "durakit:timer")]  # the late answer left no trace

    done = runner.approve(thread_id, "approve", by="erin")  # no --question: the one pending now
    assert done.extra["answered"]["question_id"] == SECOND
    assert done.extra["answered"]["interrupt_id"] == view.interrupt["id"]
    assert done.status == "completed" and done.result["outcome"] == "refunded" and done.result["approved_by"] == "erin"
    assert refunds(conn, order_id) == 1

    with pytest.raises(Conflict, match="no question is: the thread is completed"):
        runner.approve(thread_id, "approve", by="dana", question=SECOND)
    assert decisions(conn, thread_id) == [("escalate", "durakit:timer"), ("approve", "erin")]


def test_an_answer_naming_the_pending_question_goes_through(runner, conn, make_order):
    order_id = make_order()
    view = runner.run("refund", {"order_id": order_id, "amount": "250.00", "reason": "broken"})
    assert view.interrupt["question_id"] == view.question_id == FIRST
    with pytest.raises(InvalidInput, match="not a question id"):
        runner.approve(view.thread_id, "approve", by="dana", question="approval 1; rm -rf")
    done = runner.approve(view.thread_id, "reject", by="dana", question=FIRST)
    assert done.extra["answered"] == {
        "question_id": FIRST, "interrupt_id": view.interrupt["id"], "node": "await_approval",
        "question": view.interrupt["question"], "decision": "reject",
    }
    assert done.result["outcome"] == "rejected" and refunds(conn, order_id) == 0


def test_the_supervisor_email_names_the_question_it_asks(runner, conn):
    request, ids = cancellation_setup(support_tickets=4)(runner)
    view = runner.run("cancellation-save", request)
    assert view.question_id == "supervisor"
    assert f"durakit approve {view.thread_id} --question supervisor --decision approve|reject" in email_body(
        conn, f"Retention offer needs approval: account {ids['account']}")
    answered = runner.approve(view.thread_id, "approve", by="sam", question="supervisor")
    assert answered.question_id == "customer"  # the next question has an id of its own
    with pytest.raises(Conflict, match="pending now is customer"):
        runner.approve(view.thread_id, "accepted", by="ivy", question="supervisor")


def test_the_cli_refuses_a_late_answer_with_exit_4_and_says_which_question_is_pending(runner, conn, make_order):
    order_id = make_order()
    code, waiting, _ = durakit_json("run", "refund", "--input",
                                    f'{{"order_id": "{order_id}", "amount": "250.00", "reason": "broken"}}')
    thread_id = waiting["thread_id"]
    assert code == 0 and waiting["question_id"] == FIRST and waiting["interrupt"]["id"]
    shown = durakit("status", thread_id)
    assert f"answer with: durakit approve {thread_id} --question {FIRST} --decision approve|reject --by NAME" in (
        shown.stdout)

    fire_deadline(runner, thread_id, "approval_deadline:1")
    code, pending, stderr = durakit_json("pending", "--limit", "1000")
    assert code == 0, stderr
    listed = next(view for view in pending["threads"] if view["thread_id"] == thread_id)
    assert listed["question_id"] == listed["interrupt"]["question_id"] == SECOND
    code, status, _ = durakit_json("status", thread_id)
    assert status["question_id"] == SECOND

    late = durakit("approve", thread_id, "--question", FIRST, "--decision", "approve", "--by", "dana")
    assert late.returncode == 4, late
    assert late.stdout == "" and late.stderr.count("\n") == 1
    assert f"Question {FIRST} of thread {thread_id} is no longer pending" in late.stderr
    assert f"the question pending now is {SECOND}" in late.stderr
    assert refunds(conn, order_id) == 0 and decisions(conn, thread_id) == [("escalate", "durakit:timer")]

    answered = durakit("approve", thread_id, "--decision", "approve", "--by", "erin")
    assert answered.returncode == 0, answered.stderr
    assert f"answered question {SECOND} (Refund 250.00" in answered.stdout
    assert refunds(conn, order_id) == 1
