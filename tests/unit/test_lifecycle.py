"""The lifecycle rules and the typed record, without a database: who may approve, resume,
fork or fire what, and when (`durakit.lifecycle`, `durakit.record`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from durakit.errors import Conflict, InvalidInput
from durakit.lifecycle import TimerMove, can_approve, can_fork, can_resume, is_workable, on_timer
from durakit.record import Question, Status, ThreadRecord, WaitingFor

APPROVAL = {"id": "a1b2", "node": "await_approval", "question": "Refund 250.00?", "decisions": ["approve", "reject"],
            "question_id": "approval:1", "timer": "approval_deadline:1", "wakes_at": "2026-12-03T10:00:00Z",
            "on_deadline": "escalate", "amount": "250.00"}
SLEEP = {"id": "c3d4", "node": "await_reminder", "question": "Sleeping until ...", "decisions": [], "timer": "reminder",
         "wakes_at": "2026-12-05T08:00:00Z"}


def thread(status: Status = Status.WAITING, interrupt: dict[str, Any] | None = APPROVAL, **fields: Any) -> ThreadRecord:
    row = {
        "thread_id": "refund-ORD-1", "template": "refund", "status": status, "request": {}, "business_key": "ORD-1",
        "result": None, "interrupt": interrupt, "attempts": 1, "last_error": None, "error_node": None,
        "lease_owner": "host:1", "lease_held": False, "worker_managed": False, "queued": False, "taken": False,
        "superseded_by": None, "next_wake": None, "retry_at": None, "auto_retries": 0, "retry_limit": None,
        "leased_at": None, "created_at": None, "updated_at": None,
    }
    return ThreadRecord.from_row({**row, **fields})


def timer(**fields: Any) -> dict[str, Any]:
    return {"name": "approval_deadline:1", "node": "await_approval", "status": "scheduled", "due": True, "before_workers": False,
            "due_at": "2026-12-03T10:00:00Z", "payload": {"answer": {"decision": "escalate", "by": "durakit:timer",
                                                                      "note": None}}, **fields}


def test_the_record_says_what_a_thread_waits_for():
    asking, sleeping = thread(), thread(interrupt=SLEEP)
    assert asking.waiting_for is WaitingFor.PERSON and asking.asks_person.name == "approval:1"
    assert sleeping.waiting_for is WaitingFor.TIMER and sleeping.asks_person is None
    assert thread(Status.COMPLETED).question is None  # a stale interrupt column is not a question
    assert Question.from_interrupt({"id": "x9", "decisions": ["ok"]}).name == "x9"  # no template id: LangGraph's
    assert thread(Status.RUNNING, None).stale and not thread(Status.RUNNING, None, lease_held=True).stale
    assert not thread(Status.RUNNING, None, queued=True).stale and not thread(Status.RUNNING, None, taken=True).stale
    failed = thread(Status.FAILED, None, retry_at="2026-12-01T10:00:00Z", retry_limit=20)
    assert failed.retry_planned and not failed.retries_exhausted
    assert replace(failed, retry_at=None).retries_exhausted


def test_approve_takes_an_offered_decision_for_the_question_pending_now():
    assert can_approve(thread(), "approve", None).interrupt_id == "a1b2"
    assert can_approve(thread(), "approve", "approval:1").name == "approval:1"
    assert can_approve(thread(), "approve", "a1b2").name == "approval:1"  # named by LangGraph's id
    with pytest.raises(InvalidInput, match="choose one of: approve, reject"):
        can_approve(thread(), "maybe", None)


def test_an_answer_to_another_question_is_refused_and_says_which_is_pending():
    second = thread(interrupt={**APPROVAL, "id": "e5f6", "question_id": "approval:2", "question": "Escalated: 250.00?"})
    with pytest.raises(Conflict, match=r"pending now is approval:2 \(Escalated: 250.00\?\)"):
        can_approve(second, "approve", "approval:1")
    with pytest.raises(Conflict, match="no question is: the thread is completed"):
        can_approve(thread(Status.COMPLETED, None), "approve", "approval:1")


def test_what_cannot_be_approved():
    with pytest.raises(Conflict, match="is running, not waiting"):
        can_approve(thread(Status.RUNNING, None), "approve", None)
    with pytest.raises(Conflict, match="sleeps until 2026-12-05T08:00:00Z"):
        can_approve(thread(interrupt=SLEEP), "wake", None)
    with pytest.raises(Conflict, match="forked into refund-ORD-1-b"):
        can_approve(thread(superseded_by="refund-ORD-1-b"), "approve", None)


def test_resume_is_for_failed_and_abandoned_threads_only():
    can_resume(thread(Status.FAILED, None))
    can_resume(thread(Status.RUNNING, None))
    with pytest.raises(Conflict, match="already completed"):
        can_resume(thread(Status.COMPLETED, None))
    with pytest.raises(Conflict, match="--question approval:1 --decision"):
        can_resume(thread())
    with pytest.raises(Conflict, match="a worker wakes it then"):
        can_resume(thread(interrupt=SLEEP))


def test_a_fork_waits_for_a_queued_run_and_never_forks_a_superseded_thread():
    can_fork(thread())
    for busy in ({"queued": True}, {"taken": True}):
        with pytest.raises(Conflict, match="wait for the worker, then fork"):
            can_fork(thread(**busy))
    with pytest.raises(Conflict, match="which alone goes on"):
        can_fork(thread(superseded_by="other"))


def test_workers_take_running_threads_and_planned_retries():
    assert is_workable(thread(Status.RUNNING, None))
    assert is_workable(thread(Status.FAILED, None, retry_at="2026-12-01T10:00:00Z"))
    assert not is_workable(thread(Status.FAILED, None))
    assert not is_workable(thread())
    assert not is_workable(thread(Status.RUNNING, None, superseded_by="other"))


def test_a_due_deadline_fires_on_the_question_it_was_set_for_and_nothing_else():
    assert on_timer(thread(), timer()) == (TimerMove.FIRE, timer()["payload"]["answer"])
    assert on_timer(thread(), timer(due=False)) == (TimerMove.REARM, None)
    assert on_timer(thread(), timer(status="fired")) == (TimerMove.NOTHING, None)
    assert on_timer(thread(), None) == (TimerMove.NOTHING, None)
    assert on_timer(thread(Status.RUNNING, None), timer()) == (TimerMove.NOTHING, None)  # the run settles, re-arming it
    answered_in_time = thread(interrupt={**APPROVAL, "id": "e5f6", "timer": "approval_deadline:2"})
    assert on_timer(answered_in_time, timer()) == (TimerMove.CANCEL, None)
    assert on_timer(thread(superseded_by="fork"), timer()) == (TimerMove.CANCEL, None)
    move, answer = on_timer(thread(interrupt=SLEEP), timer(name="reminder", payload={}))
    assert move is TimerMove.FIRE and answer["decision"] == "wake"
