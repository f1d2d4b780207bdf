"""What a thread is, as types: its status, the question it waits on, its registry record.

The registry (`durakit.registry`) reads rows; everything above it asks these types, never
the row's keys: whether a thread waits for a person or only sleeps until a timer is
`Question.waiting_for`, whether a running thread lost its process is `ThreadRecord.stale`.
No LangGraph, no database: the CLI's quick commands and the lifecycle rules use them as
they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Where a thread stands (`durakit_threads.status`)."""

    RUNNING = "running"  # a process advances it, or did until it died (then it is stale)
    WAITING = "waiting"  # for a person's answer, or asleep until a timer
    COMPLETED = "completed"
    FAILED = "failed"  # resumable once the cause is fixed; a transient cause is retried by workers


class WaitingFor(StrEnum):
    """What a waiting thread waits for (`durakit_threads.waiting_for`)."""

    PERSON = "person"  # a question with decisions to choose from
    TIMER = "timer"  # a sleep, or a question only its deadline will answer


@dataclass(frozen=True)
class Question:
    """The interrupt a waiting thread stopped at, as the registry keeps it: a question for a
    person (it offers decisions) or a sleep until a timer (it offers none)."""

    interrupt_id: str  # LangGraph's id of the interrupt
    node: str | None  # the node that asks, or sleeps
    text: str
    decisions: tuple[str, ...]
    name: str  # how a person names it (`approve --question`): the template's id for it, else the interrupt's
    timer: str | None  # the deadline's or the sleep's timer
    wakes_at: str | None
    on_deadline: str | None  # the decision the deadline gives
    stored: Mapping[str, Any]  # everything the template gave with it (facts for the person, the answer schema)

    @classmethod
    def from_interrupt(cls, interrupt: Mapping[str, Any]) -> Question:
        return cls(
            interrupt_id=interrupt["id"],
            node=interrupt.get("node"),
            text=str(interrupt.get("question") or ""),
            decisions=tuple(interrupt.get("decisions") or ()),
            name=interrupt.get("question_id") or interrupt["id"],
            timer=interrupt.get("timer"),
            wakes_at=interrupt.get("wakes_at"),
            on_deadline=interrupt.get("on_deadline"),
            stored=interrupt,
        )

    @staticmethod
    def to_interrupt(interrupt_id: str, node: str | None, value: Any, answer_schema: Any) -> dict[str, Any]:
        """The interrupt as the registry stores it, from what LangGraph's interrupt holds."""
        value = value if isinstance(value, dict) else {"question": str(value)}
        return {"id": interrupt_id, "node": node, **value, "answer_schema": answer_schema}

    @property
    def waiting_for(self) -> WaitingFor:
        return WaitingFor.PERSON if self.decisions else WaitingFor.TIMER

    @property
    def for_person(self) -> bool:
        return self.waiting_for is WaitingFor.PERSON

    def is_named(self, question: str) -> bool:
        """True if `question` names this question (by the template's id or the interrupt's)."""
        return question in (self.name, self.interrupt_id)


@dataclass(frozen=True)
class ThreadRecord:
    """A thread's registry row, read once per operation and asked, not re-derived."""

    thread_id: str
    template: str
    status: Status
    request: dict[str, Any]
    business_key: str | None
    result: dict[str, Any] | None
    question: Question | None  # while WAITING
    attempts: int
    last_error: str | None
    error_node: str | None
    lease_owner: str | None  # host:pid of the process that advanced it last
    lease_held: bool  # some process holds its lock now
    worker_managed: bool  # started with `durakit submit`: workers advance it
    queued: bool  # a run of it waits in the job queue
    taken: bool  # a live worker has taken a run of it
    superseded_by: str | None  # forked into this thread, which alone goes on
    next_wake: str | None
    retry_at: str | None  # FAILED on a transient cause: when a worker retries it
    auto_retries: int
    retry_limit: int | None
    leased_at: str | None
    created_at: str | None
    updated_at: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ThreadRecord:
        status = Status(row["status"])
        return cls(
            thread_id=row["thread_id"],
            template=row["template"],
            status=status,
            request=row["request"],
            business_key=row["business_key"],
            result=row["result"],
            question=Question.from_interrupt(row["interrupt"]) if status is Status.WAITING and row["interrupt"] else None,
            attempts=row["attempts"],
            last_error=row["last_error"],
            error_node=row["error_node"],
            lease_owner=row["lease_owner"],
            lease_held=row["lease_held"],
            worker_managed=row["worker_managed"],
            queued=row["queued"],
            taken=row["taken"],
            superseded_by=row["superseded_by"],
            next_wake=row["next_wake"],
            retry_at=row["retry_at"],
            auto_retries=row["auto_retries"],
            retry_limit=row["retry_limit"],
            leased_at=row["leased_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    @property
    def stale(self) -> bool:
        """`running`, but its process is gone: nobody holds it and no worker will run it."""
        return (self.status is Status.RUNNING and not self.lease_held and not self.superseded_by
                and not self.queued and not self.taken)

    @property
    def waiting_for(self) -> WaitingFor | None:
        return self.question.waiting_for if self.question else None

    @property
    def asks_person(self) -> Question | None:
        """The question a person may answer now, if the thread waits for one."""
        return self.question if self.question and self.question.for_person else None

    @property
    def retry_planned(self) -> bool:
        """Failed on a transient cause, with a worker's automatic retry queued."""
        return self.status is Status.FAILED and self.retry_at is not None

    @property
    def retries_exhausted(self) -> bool:
        return self.status is Status.FAILED and self.retry_at is None and self.retry_limit is not None
