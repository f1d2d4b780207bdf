"""What the façade hands back: a thread as `durakit status --json` prints it, a page of a
listing, a recovery report. Built from the typed record (`durakit.record`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from durakit.record import Question, Status, ThreadRecord


@dataclass
class ThreadView:
    """Where a thread stands: what `durakit status --json` prints."""

    thread_id: str
    template: str
    status: Status
    interrupt: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    error_node: str | None = None
    question_id: str | None = None  # the question waiting for a person, as `approve --question` takes it
    attempts: int = 0
    stale: bool = False  # `running`, but its process is gone: `durakit recover` resumes it
    queued: bool = False  # a run of it waits in the queue for a worker
    worker_managed: bool = False  # started with `durakit submit`: workers advance it
    next_wake: str | None = None  # when its next timer fires (a reminder, a deadline)
    retry_at: str | None = None  # failed on a transient error: when a worker retries it (`durakit.retries`)
    auto_retries: int = 0  # failed: the automatic retries made so far (retry_at: counting the one planned)
    retry_limit: int | None = None  # failed: the template's limit, once retries were planned or used up
    retries_exhausted: bool = False  # failed on a transient error after the last automatic retry
    lease_owner: str | None = None
    superseded_by: str | None = None  # forked into this thread, which alone goes on
    created_at: str | None = None
    updated_at: str | None = None
    effects: list[dict[str, Any]] | None = None
    timers: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: ThreadRecord) -> ThreadView:
        failed = record.status is Status.FAILED
        person = record.asks_person
        return cls(
            thread_id=record.thread_id,
            template=record.template,
            status=record.status,
            interrupt=dict(record.question.stored) if record.question else None,
            question_id=person.name if person else None,
            result=record.result,
            error=record.last_error if failed else None,
            error_node=record.error_node if failed else None,
            attempts=record.attempts,
            stale=record.stale,
            queued=record.queued,
            worker_managed=record.worker_managed,
            next_wake=record.next_wake,
            retry_at=record.retry_at if failed else None,
            auto_retries=record.auto_retries if failed else 0,
            retry_limit=record.retry_limit if failed else None,
            retries_exhausted=record.retries_exhausted,
            lease_owner=record.lease_owner,
            superseded_by=record.superseded_by,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )

    @property
    def question(self) -> Question | None:
        """The interrupt it waits on, typed (for what reads a view: output, the demo, the worker)."""
        return Question.from_interrupt(self.interrupt) if self.interrupt else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        extra = data.pop("extra")
        for detail in ("effects", "timers"):
            if data[detail] is None:
                del data[detail]
        return {**data, **extra}


@dataclass
class RecoveryReport:
    resumed: list[ThreadView]
    busy: list[str]  # stale a moment ago, but another process took them first
    errors: dict[str, str]  # thread id -> why it could not be resumed (the others still were)

    def to_dict(self) -> dict[str, Any]:
        return {"resumed": [view.to_dict() for view in self.resumed], "busy": self.busy, "errors": self.errors}


@dataclass
class ThreadPage:
    """One page of a listing (`durakit threads`, `durakit pending`); iterating it gives
    its threads."""

    threads: list[ThreadView]
    total: int  # how many threads match, on every page
    limit: int
    offset: int

    def __iter__(self) -> Iterator[ThreadView]:
        return iter(self.threads)

    def to_dict(self) -> dict[str, Any]:
        return {"threads": [view.to_dict() for view in self.threads], "total": self.total,
                "limit": self.limit, "offset": self.offset}
