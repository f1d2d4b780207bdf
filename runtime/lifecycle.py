"""Who may do what to a thread, and when: pure functions of its record (`durakit.record`)
and the command, so the rules read in one place and are tested without a database.

Each `can_*` returns what the operation works on, or raises the error a user meets
(Conflict, exit 4; InvalidInput, exit 2) with one sentence; nothing has been written yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from durakit import timers
from durakit.errors import Conflict, InvalidInput
from durakit.record import Question, Status, ThreadRecord


def refuse_superseded(record: ThreadRecord) -> None:
    """Only the newest thread of a line of forks acts: two could make the same refund twice."""
    if record.superseded_by:
        raise Conflict(
            f"Thread {record.thread_id} was forked into {record.superseded_by}, which alone goes on; "
            f"use {record.superseded_by}."
        )


def can_resume(record: ThreadRecord) -> None:
    """A thread resumes when it failed or its process died; not while it waits or once done."""
    refuse_superseded(record)
    thread_id = record.thread_id
    if record.status is Status.COMPLETED:
        raise Conflict(f"Thread {thread_id} is already completed; there is nothing to resume.")
    if record.status is not Status.WAITING:
        return
    question = record.question
    if question is not None and not question.for_person:
        raise Conflict(
            f"Thread {thread_id} sleeps until {question.wakes_at} ({question.timer}); "
            "a worker wakes it then, and there is nothing to resume before."
        )
    name = question.name if question else "ID"
    raise Conflict(
        f"Thread {thread_id} is waiting for a decision ({question.text if question else 'a decision'}); "
        f"answer it with `durakit approve {thread_id} --question {name} --decision ...`."
    )


def can_approve(record: ThreadRecord, decision: str, question: str | None) -> Question:
    """The question a person's `decision` answers. With `question` (its id, as the approval
    email names it) the answer is for that question only: once it is answered, decided by
    its deadline or followed by another, the answer is refused."""
    refuse_superseded(record)
    refuse_other_question(record, question)
    thread_id = record.thread_id
    pending = record.question
    if pending is None:
        raise Conflict(f"Thread {thread_id} is {record.status}, not waiting for a decision.")
    if not pending.for_person:
        raise Conflict(
            f"Thread {thread_id} is not waiting for a decision: it sleeps until {pending.wakes_at} "
            f"({pending.timer}), and a worker wakes it then."
        )
    if decision not in pending.decisions:
        raise InvalidInput(
            f"{decision!r} is not an answer to this question; choose one of: {', '.join(pending.decisions)}."
        )
    return pending


def refuse_other_question(record: ThreadRecord, question: str | None) -> None:
    if question is None:
        return
    pending = record.asks_person
    if pending is not None and pending.is_named(question):
        return
    thread_id = record.thread_id
    if pending is None:
        asleep = " (sleeping until a timer)" if record.status is Status.WAITING else ""
        raise Conflict(
            f"Question {question} of thread {thread_id} is not pending, and no question is: the thread is "
            f"{record.status}{asleep}; nothing was recorded."
        )
    raise Conflict(
        f"Question {question} of thread {thread_id} is no longer pending (answered, decided by its deadline, or "
        f"never asked); the question pending now is {pending.name} ({pending.text}), and nothing was recorded."
    )


def can_fork(record: ThreadRecord) -> None:
    """A fork must not leave a run of its source behind: a queued answer would be lost to
    the fork, and the superseded source left `running` for good."""
    refuse_superseded(record)
    if record.queued or record.taken:
        raise Conflict(
            f"Thread {record.thread_id} has a run queued for a worker (an answer, or a run handed back); "
            "wait for the worker, then fork."
        )


def is_workable(record: ThreadRecord) -> bool:
    """A worker may run the thread: it runs (or its process died), or it failed and waits
    for an automatic retry."""
    if record.superseded_by:
        return False
    return record.status is Status.RUNNING or record.retry_planned


class TimerMove(StrEnum):
    """What a due timer's job does with its thread (`Runner.fire_timer`)."""

    NOTHING = "nothing"  # gone or fired already, or a run goes on and settles (re-arming it if it still waits)
    REARM = "rearm"  # moved later while the job ran: a job for then
    CANCEL = "cancel"  # the thread no longer waits for it (answered before the deadline, gone on)
    FIRE = "fire"  # answer the thread's question (the deadline's decision) or wake it


def on_timer(record: ThreadRecord, timer: Mapping[str, Any] | None) -> tuple[TimerMove, dict[str, Any] | None]:
    """What to do with `timer` (its row, as `timers.get` reads it) now, and the answer it
    gives when it fires."""
    if timer is None or timer["status"] != "scheduled":
        return TimerMove.NOTHING, None
    if not timer["due"]:
        return TimerMove.REARM, None
    if record.status is Status.RUNNING and not record.superseded_by:
        return TimerMove.NOTHING, None
    question = None if record.superseded_by else record.question
    answer = timers.answer(record.template, timer, dict(question.stored)) if question else None
    return (TimerMove.CANCEL, None) if answer is None else (TimerMove.FIRE, answer)
