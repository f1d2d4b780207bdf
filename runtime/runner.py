"""The runner: durakit's Python API. The CLI is a thin skin over it.

    from durakit import Runner

    with Runner.open() as runner:
        view = runner.run("refund", {"order_id": "ORD-1", "amount": "250.00", "reason": "broken"})
        if view.status == "waiting":
            view = runner.approve(view.thread_id, "approve", by="dana")

Every method that advances a thread holds that thread's lock (`durakit.lease`) for the
whole advance, runs the graph with durability="sync" (each finished step is on disk
before the next starts), and settles the thread's registry row from the checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import ValidationError

from durakit import db, encryption, events, faults, jobs, ledger, metrics, registry, timers
from durakit.adapters.sandbox import Sandbox
from durakit.checkpointers import open_pool
from durakit.errors import Conflict, DatabaseUnavailable, DurakitError, InvalidInput, NotFound
from durakit.events import EventLog
from durakit.graphs import check_template_name, get_template
from durakit.judgement import Judgement, judgement_from_env
from durakit.lease import LEASE_EPOCH_KEY, LeaseLost, ThreadLocks
from durakit.ledger import EffectLedger, thread_effects
from durakit.services import Adapters, Services
from durakit.settings import KitSettings
from durakit.timers import Timers, thread_timers

# LangGraph and the templates are imported where a thread is advanced or a request
# checked: looking at threads (status, history, threads, pending) reads durakit's tables
# and needs neither, so those commands start in a fraction of the time.
if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph
    from langgraph.runtime import RunControl
    from langgraph.types import Command, StateSnapshot
    from pydantic_settings import BaseSettings

    from durakit.authority import Authority
    from durakit.checkpointers.saver import DurakitSaver
    from durakit.retention import PruneReport
    from durakit.templates import Template, TemplateRequest

STATUSES = ("running", "waiting", "completed", "failed")

# Thread ids reach SQL, URLs, logs and idempotency keys: keep them to a safe alphabet.
THREAD_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
CHECKPOINT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")  # LangGraph's are UUIDs
# A template's question ids ("approval:2") and LangGraph's interrupt ids (32 hex digits).
QUESTION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

# A listing shows PAGE_SIZE threads unless asked for up to MAX_PAGE_SIZE; more are paged.
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_OFFSET = 1_000_000_000

# How often one command reconnects after losing the database before it gives the thread
# back (still `running`, for `durakit resume` or `recover`).
MAX_RECONNECTS = 10


def is_connection_lost(exc: BaseException) -> bool:
    """The database went away under a run: its connections broke, or the session holding
    the thread's lock ended."""
    return isinstance(exc, LeaseLost) or db.is_connection_lost(exc)


@dataclass
class ThreadView:
    """Where a thread stands: what `durakit status --json` prints."""

    thread_id: str
    template: str
    status: str
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
    def from_row(cls, row: Mapping[str, Any]) -> ThreadView:
        return cls(
            thread_id=row["thread_id"],
            template=row["template"],
            status=row["status"],
            interrupt=row["interrupt"] if row["status"] == "waiting" else None,
            question_id=pending_question(row),
            result=row["result"],
            error=row["last_error"] if row["status"] == "failed" else None,
            error_node=row["error_node"] if row["status"] == "failed" else None,
            attempts=row["attempts"],
            stale=row["status"] == "running" and not row["lease_held"] and not row["superseded_by"]
            and not row["queued"] and not row["taken"],
            queued=row["queued"],
            worker_managed=row["worker_managed"],
            next_wake=row["next_wake"],
            retry_at=row["retry_at"] if row["status"] == "failed" else None,
            auto_retries=row["auto_retries"] if row["status"] == "failed" else 0,
            retry_limit=row["retry_limit"] if row["status"] == "failed" else None,
            retries_exhausted=row["status"] == "failed" and row["retry_at"] is None and row["retry_limit"] is not None,
            lease_owner=row["lease_owner"],
            superseded_by=row["superseded_by"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
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


def check_page(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"--limit takes a number of threads from 1 to {MAX_PAGE_SIZE:,}, not {limit!r}.")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"--offset takes a number of threads to skip from 0 to {MAX_OFFSET:,}, not {offset!r}.")


def refuse_superseded(row: Mapping[str, Any]) -> None:
    """Only the newest thread of a line of forks acts: two could make the same refund twice."""
    if row["superseded_by"]:
        raise Conflict(
            f"Thread {row['thread_id']} was forked into {row['superseded_by']}, which alone goes on; "
            f"use {row['superseded_by']}."
        )


def question_id_of(interrupt: Mapping[str, Any]) -> str:
    """The id a person names a question by: the one its template gave it (which an
    approval email can print before the question is asked), else LangGraph's interrupt id."""
    return interrupt.get("question_id") or interrupt["id"]


def pending_question(row: Mapping[str, Any]) -> str | None:
    """The id of the question the thread waits for a person to answer, if it does."""
    interrupt = row["interrupt"] if row["status"] == "waiting" else None
    return question_id_of(interrupt) if interrupt and interrupt.get("decisions") else None


def refuse_other_question(row: Mapping[str, Any], question: str | None) -> None:
    """An answer that names its question is for that question only: once the question is
    answered, decided by its deadline or followed by another, the answer is refused."""
    if question is None:
        return
    pending = pending_question(row)
    if pending is not None and question in (pending, row["interrupt"]["id"]):
        return
    thread_id = row["thread_id"]
    if pending is None:
        raise Conflict(
            f"Question {question} of thread {thread_id} is not pending, and no question is: the thread is "
            f"{row['status']}{' (sleeping until a timer)' if row['status'] == 'waiting' else ''}; nothing was recorded."
        )
    raise Conflict(
        f"Question {question} of thread {thread_id} is no longer pending (answered, decided by its deadline, or "
        f"never asked); the question pending now is {pending} ({row['interrupt'].get('question')}), and nothing "
        "was recorded."
    )


def check_question_id(question: str) -> str:
    if not isinstance(question, str) or not QUESTION_ID_PATTERN.fullmatch(question):
        raise InvalidInput(
            f"{str(question)[:80]!r} is not a question id; `durakit pending` and `durakit status` show each question's."
        )
    return question


def refuse_queued(row: Mapping[str, Any]) -> None:
    """A fork must not leave a run of its source behind: the queued answer would be lost
    to the fork, and the superseded source left `running` with nobody to finish it."""
    if row["queued"] or row["taken"]:
        raise Conflict(
            f"Thread {row['thread_id']} has a run queued for a worker (an answer, or a run handed back); "
            "wait for the worker, then fork."
        )


def check_thread_id(thread_id: str) -> str:
    if not isinstance(thread_id, str) or not THREAD_ID_PATTERN.fullmatch(thread_id):
        raise InvalidInput(
            f"{thread_id!r} is not a valid thread id: use 1 to 128 letters, digits and . _ : @ -, "
            "starting with a letter or digit."
        )
    return thread_id


def parse_request(template: Template, raw: str | Mapping[str, Any]) -> TemplateRequest:
    """Validate a template's input (a JSON text or a mapping) before anything is written."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"The input is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}).") from None
        except RecursionError:
            raise InvalidInput("The input is not a usable JSON object (it is nested too deeply).") from None
        except ValueError:  # an integer of more than 4,300 digits
            raise InvalidInput("The input is not a usable JSON object (it holds a number too long to read).") from None
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"The input must be a JSON object with the {template.name} template's fields.")
    try:
        return template.request_model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"Invalid {template.name} input: {describe_validation_error(exc)}.") from None


def check_answer(template: Template, node: str | None, answer: dict[str, Any]) -> dict[str, Any]:
    """Validate a person's answer with the asking node's answer model, before it is recorded."""
    model = template.answers.get(node or "")
    if model is None:
        return answer
    try:
        return model.model_validate(answer).model_dump(mode="json")
    except ValidationError as exc:
        raise InvalidInput(f"The answer was refused: {describe_validation_error(exc)}.") from None


def field_name(part: str | int) -> str:
    """A field name for a message; one the input made up is quoted, shortened and escaped."""
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_]{1,64}", text) else repr(text[:40])


def describe_validation_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(field_name(part) for part in first["loc"]) or "input"
    text = f"{where}: {first['msg']}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text


class Runner:
    def __init__(
        self,
        database: db.Database,
        *,
        kit_settings: KitSettings | None = None,
        adapters: Adapters | None = None,
        judgement: Judgement | None = None,
        template_settings: Mapping[str, BaseSettings] | None = None,
        authority: Authority | None = None,
    ) -> None:
        kit_settings = kit_settings or KitSettings.from_env()
        self.database = database
        try:
            self.pool = open_pool(
                database.url, max_size=kit_settings.pool_max_size, transaction_pooler=kit_settings.transaction_pooler
            )
        except PoolTimeout as exc:
            raise DatabaseUnavailable(f"Cannot reach the database at {database.display}.") from exc
        self.kit_settings = kit_settings
        self._saver: DurakitSaver | None = None
        self._saver_pool: ConnectionPool | None = None
        self.locks = ThreadLocks(database.url)
        self.events = EventLog(self.pool)
        self.sandbox = Sandbox(self.pool)
        self.adapters = adapters or Adapters(
            billing=self.sandbox,
            crm=self.sandbox,
            notifier=self.sandbox,
            audit=self.sandbox,
            calendar=self.sandbox,
            ticketing=self.sandbox,
        )
        self.judgement = judgement or judgement_from_env()
        self.template_settings = dict(template_settings or {})
        self.authority = authority  # None: read from the environment when first needed
        self.home = kit_settings.home
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.db_retry_seconds = kit_settings.db_retry_seconds
        self._graphs: dict[str, CompiledStateGraph] = {}
        self._controls: set[RunControl] = set()  # the runs in progress, for `drain`
        self._controls_mutex = threading.Lock()
        self._drain_reason: str | None = None

    @property
    def saver(self) -> DurakitSaver:
        """durakit's LangGraph saver, made when a thread is first advanced, on a pool of its
        own whose connections are not pinged before each loan (see `open_pool`)."""
        if self._saver is None:
            from durakit.checkpointers import postgres_saver

            db.check_installed_saver()
            try:
                self._saver_pool = open_pool(
                    self.database.url, max_size=self.kit_settings.pool_max_size, name="durakit-saver",
                    transaction_pooler=self.kit_settings.transaction_pooler, checked=False,
                )
            except PoolTimeout as exc:
                raise DatabaseUnavailable(f"Cannot reach the database at {self.database.display}.") from exc
            self._saver = postgres_saver(self._saver_pool, serde=encryption.checkpoint_serializer_from_env())
        return self._saver

    @classmethod
    def open(cls, kit_settings: KitSettings | None = None, **kwargs: Any) -> Runner:
        """A runner on the configured database, after checking that its schema is current."""
        kit_settings = kit_settings or KitSettings.from_env()
        faults.configured()  # refuse a malformed DURAKIT_FAULT before anything runs
        encryption.configured()  # and a malformed DURAKIT_ENCRYPTION_KEY
        database = db.locate(kit_settings)
        db.ensure_schema(database)
        return cls(database, kit_settings=kit_settings, **kwargs)

    def close(self) -> None:
        self.locks.close()
        self.pool.close()
        if self._saver_pool is not None:
            self._saver_pool.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Starting, resuming and answering threads

    def run(
        self, template_name: str, request: str | Mapping[str, Any], *, thread_id: str | None = None
    ) -> ThreadView:
        """Start a thread for `request` and run it in this process until it finishes or
        waits; the same request again reaches the same thread."""
        template = get_template(template_name)
        parsed = parse_request(template, request)
        settings = self._settings(template)
        thread_id = check_thread_id(template.thread_id_for(parsed) if thread_id is None else thread_id)
        with self.locks.hold(thread_id):
            existing = self._register(template, parsed, thread_id, queue=False)
            if existing is not None:
                return existing
            self.locks.claim(thread_id)  # registered under the lock: its writes are fenced from here
            faults.maybe_kill("__start__", "before")  # registered, no checkpoint yet
            return self._advance(template, thread_id, template.initial_state(parsed), "run_started", settings)

    def submit(
        self, template_name: str, request: str | Mapping[str, Any], *, thread_id: str | None = None
    ) -> ThreadView:
        """Start a thread for `request` and queue its run for the workers (`durakit
        worker`); returns at once. The thread is worker-managed: answers to it are queued
        for the workers too. The same request again reaches the same thread."""
        template = get_template(template_name)
        parsed = parse_request(template, request)
        self._settings(template)  # refuse broken settings before anything is queued
        thread_id = check_thread_id(template.thread_id_for(parsed) if thread_id is None else thread_id)
        existing = self._register(template, parsed, thread_id, queue=True)
        return existing or ThreadView.from_row(self._row(thread_id))

    def _register(
        self, template: Template, parsed: TemplateRequest, thread_id: str, *, queue: bool
    ) -> ThreadView | None:
        """Register a new thread (and with `queue`, its first job); None if it was new,
        else the existing thread, which must be for the same request."""
        stored = parsed.model_dump(mode="json")
        with self.pool.connection() as conn:
            with conn.transaction():
                created = registry.create(
                    conn, thread_id, template.name, stored, parsed.business_key(), worker_managed=queue
                )
                if created and queue:
                    jobs.defer_advance(conn, thread_id, "run_started")
            existing = None if created else registry.get(conn, thread_id)
        if existing is None:
            return None
        same = existing["template"] == template.name and (
            template.request_model.model_validate(existing["request"], context={"stored": True}) == parsed
        )
        if not same:
            raise Conflict(
                f"Thread {thread_id} already exists for a different request; "
                "pass another --thread-id (or a ticket_id) to start a new one."
            )
        return ThreadView.from_row(existing)

    def resume(self, thread_id: str) -> ThreadView:
        """Continue a thread that failed or whose process died, from its last checkpoint."""
        check_thread_id(thread_id)
        self._row(thread_id)  # unknown thread: NotFound before taking any lock
        with self.locks.hold(thread_id):
            row = self._row(thread_id)
            refuse_superseded(row)
            if row["status"] == "completed":
                raise Conflict(f"Thread {thread_id} is already completed; there is nothing to resume.")
            if row["status"] == "waiting" and row["waiting_for"] == "timer":
                raise Conflict(
                    f"Thread {thread_id} sleeps until {row['interrupt'].get('wakes_at')} ({row['interrupt'].get('timer')}); "
                    "a worker wakes it then, and there is nothing to resume before."
                )
            if row["status"] == "waiting":
                question = (row["interrupt"] or {}).get("question", "a decision")
                raise Conflict(
                    f"Thread {thread_id} is waiting for a decision ({question}); answer it with "
                    f"`durakit approve {thread_id} --question {pending_question(row)} --decision ...`."
                )
            if row["status"] == "failed":
                self._forget_retries(thread_id)  # a person retries it now: the automatic count starts again
            return self._continue(row, "resumed")

    def approve(
        self,
        thread_id: str,
        decision: str,
        *,
        by: str,
        note: str | None = None,
        wait: bool = False,
        question: str | None = None,
    ) -> ThreadView:
        """Answer the question a waiting thread asks, and run it on from there: in this
        process, or for a worker-managed thread (`submit`) by queueing the run for the
        workers and returning at once, unless `wait` asks to run it here.

        `question` is the id of the question answered (`question_id`, as `durakit pending`
        and the approval emails show it): if that question is no longer the one pending
        (answered, decided by its deadline, followed by another), the answer is refused
        with Conflict and nothing is recorded. Without it, the question pending now is
        answered. Either way the view returned says which (`extra["answered"]`)."""
        from langgraph.types import Command

        check_thread_id(thread_id)
        if question is not None:
            check_question_id(question)
        self._row(thread_id)
        with self.locks.hold(thread_id):
            row = self._row(thread_id)
            refuse_superseded(row)
            refuse_other_question(row, question)
            if row["status"] != "waiting":
                raise Conflict(f"Thread {thread_id} is {row['status']}, not waiting for a decision.")
            interrupt = row["interrupt"]
            allowed = interrupt.get("decisions") or []
            if not allowed and interrupt.get("timer"):
                raise Conflict(
                    f"Thread {thread_id} is not waiting for a decision: it sleeps until {interrupt.get('wakes_at')} "
                    f"({interrupt['timer']}), and a worker wakes it then."
                )
            if decision not in allowed:
                raise InvalidInput(
                    f"{decision!r} is not an answer to this question; choose one of: {', '.join(allowed)}."
                )
            template = get_template(row["template"])
            settings = self._settings(template)
            snapshot = self._graph(template).get_state(self._config(thread_id))
            if interrupt["id"] not in {pending.id for pending in snapshot.interrupts}:
                raise Conflict(f"The question thread {thread_id} asked has been answered already.")
            answer = check_answer(template, interrupt.get("node"), {"decision": decision, "by": by, "note": note})
            authorized_as = self._authorize(template, thread_id, interrupt, answer)
            queue = row["worker_managed"] and not wait
            with self.pool.connection() as conn:
                with conn.transaction():
                    self.locks.lease(thread_id).check(conn)
                    recorded = registry.record_decision(conn, thread_id, interrupt, answer, authorized_as)
                    if recorded:
                        events.insert(conn, thread_id, "decided", interrupt.get("node"),
                                      decision=answer["decision"], by=answer["by"], note=answer["note"],
                                      question_id=question_id_of(interrupt))
                        if queue:
                            jobs.defer_advance(conn, thread_id, "resumed")
                            queued = registry.get(conn, thread_id)  # read before a worker takes it
                if not recorded:
                    earlier = registry.who_decided(conn, thread_id, interrupt["id"]) or {}
                    raise Conflict(
                        f"Thread {thread_id}'s question was answered already by {earlier.get('decided_by')} "
                        f"at {earlier.get('decided_at')}."
                    )
            answered = {
                "question_id": question_id_of(interrupt), "interrupt_id": interrupt["id"],
                "node": interrupt.get("node"), "question": interrupt.get("question"), "decision": answer["decision"],
            }
            if queue:
                view = ThreadView.from_row(queued)  # running, and queued for a worker
            else:
                view = self._advance(template, thread_id, Command(resume={interrupt["id"]: answer}), "resumed", settings)
            view.extra["answered"] = answered
            return view

    def _authorize(
        self, template: Template, thread_id: str, interrupt: dict[str, Any], answer: dict[str, Any]
    ) -> list[str]:
        """The roles that let the answer's author answer; refused answers are logged."""
        from durakit.authority import Authority, NotAuthorized

        if self.authority is None:
            self.authority = Authority.from_env(self.home)
        try:
            return self.authority.check(template.name, interrupt, answer["by"])
        except NotAuthorized as exc:
            self.events.record(
                thread_id,
                "decision_refused",
                interrupt.get("node"),
                decision=answer["decision"],
                by=answer["by"],
                reason=str(exc),
            )
            raise

    # What workers do (`durakit.worker`)

    def work(self, thread_id: str, kind: str, *, lock_wait: float = 2.0) -> ThreadView | None:
        """Run a `running` thread on from its checkpoint (a queued run or answer, a run
        whose process died), or a `failed` one whose automatic retry is planned; None if
        there is nothing to run. Waits up to `lock_wait` seconds for a process that still
        holds the thread (an `approve` that queued this run lets go of it a moment later),
        then raises ThreadBusy."""
        row = self._row(check_thread_id(thread_id))
        if not is_workable(row):
            return None
        with self.locks.hold(thread_id, wait=lock_wait):
            row = self._row(thread_id)
            if not is_workable(row):
                return None  # another process ran it meanwhile, or a person resumed it
            view = self._continue(row, kind)
            if view.status != "failed" and row["auto_retries"]:
                self._forget_retries(thread_id)  # it got past the failure: a later one counts afresh
            return view

    def _forget_retries(self, thread_id: str) -> None:
        from durakit.retries import AUTO_RETRY

        with self._fenced(thread_id) as conn:
            if registry.forget_retries(conn, thread_id):
                jobs.cancel_retry(conn, thread_id, AUTO_RETRY)

    def fire_timer(self, thread_id: str, name: str, *, lock_wait: float = 2.0) -> ThreadView | None:
        """Fire the thread's timer `name` if it is due, and run the thread on from there;
        None if there is nothing to fire (not due yet, cancelled or fired already, or the
        thread no longer waits for it, say because a person answered before the deadline)."""
        with self.locks.hold(check_thread_id(thread_id), wait=lock_wait):
            row = self._row(thread_id)
            if self._wake_completed_before_workers(row, name):
                row = self._row(thread_id)  # now asleep in the node that waits on this timer
            with self._fenced(thread_id) as conn:
                timer = timers.get(conn, thread_id, name)
                if timer is None or timer["status"] != "scheduled":
                    return None  # gone, or fired already
                if not timer["due"]:
                    timers.arm(conn, thread_id, name)  # moved later while this job ran: a job for then
                    return None
                if row["status"] == "running" and not row["superseded_by"]:
                    return None  # a run goes on (or died) and settles, re-arming it if it still waits on it
                interrupt = row["interrupt"] if row["status"] == "waiting" else None
                answer = None if row["superseded_by"] or interrupt is None else timers.answer(
                    row["template"], timer, interrupt
                )
                if answer is None:
                    timers.cancel(conn, thread_id, name)
                    events.insert(conn, thread_id, "timer_cancelled", timer["node"], timer=name)
                    return None
                registry.record_decision(conn, thread_id, interrupt, answer, ["timer"])
                timers.mark_fired(conn, thread_id, name)
                events.insert(conn, thread_id, "timer_fired", timer["node"], timer=name, due_at=timer["due_at"],
                              decision=answer["decision"])
            return self._continue(self._row(thread_id), "woken")

    def _wake_completed_before_workers(self, row: Mapping[str, Any], name: str) -> bool:
        """A thread that completed before workers with this timer pending, now due (its
        template then only recorded it): carry it on from the node it ended in, into the
        node that sleeps until the timer today (`timers.BEFORE_WORKERS`), so that firing
        it does what the template does now. True if it did (lock held)."""
        if row["status"] != "completed" or row["superseded_by"]:
            return False
        thread_id = row["thread_id"]
        with self.pool.connection() as conn:
            timer = timers.get(conn, thread_id, name)
        old = timers.before_workers(row["template"], timer) if timer else None
        if old is None or old.ended_in is None or timer["status"] != "scheduled" or not timer["due"]:
            return False
        graph = self._graph(get_template(row["template"]))
        fenced = {"configurable": {"thread_id": thread_id, LEASE_EPOCH_KEY: self.locks.lease(thread_id).epoch}}
        graph.update_state(fenced, None, as_node=old.ended_in)  # what the template does after that node now
        self._continue(self._row(thread_id), "woken")  # to the sleep, which keeps the timer as it is
        return True

    def move_timer(self, thread_id: str, name: str, due_at: datetime) -> None:
        """Move a scheduled timer (and the job that fires it) to `due_at`: to fire a
        reminder early, or to put a deadline off."""
        if due_at.tzinfo is None:
            raise InvalidInput("Give the new due time with its time zone (for example 2026-12-01T09:00:00+00:00).")
        with self.pool.connection() as conn, conn.transaction():
            if not timers.move(conn, check_thread_id(thread_id), name, due_at):
                raise NotFound(f"Thread {thread_id} has no scheduled timer {name!r}; `durakit timers` lists them.")

    def warm_up(self) -> None:
        """Load LangGraph, the saver and every template's graph now, so that a worker's
        first job does not wait a second and a half for them."""
        from durakit.graphs import MODULES

        for name in MODULES:
            self._graph(get_template(name))

    def list_timers(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Every timer still to fire, soonest first."""
        return timers.scheduled(self.pool, limit)

    def drain(self, reason: str = "shutdown") -> None:
        """Stop every run of this process at its next step boundary (the step's checkpoint
        saved) and queue the rest of each thread for another worker; runs asked for after
        this stop before their first step."""
        with self._controls_mutex:
            self._drain_reason = reason
            for control in self._controls:
                control.request_drain(reason)

    def recover(self) -> RecoveryReport:
        """Resume every `running` thread whose process died (nobody holds its lock)."""
        with self.pool.connection() as conn:
            candidates = registry.orphans(conn)
        report = RecoveryReport(resumed=[], busy=[], errors={})
        for thread_id in candidates:
            if not self.locks.try_acquire(thread_id):
                report.busy.append(thread_id)
                continue
            try:
                row = self._row(thread_id)
                if row["status"] == "running":
                    report.resumed.append(self._continue(row, "recovered"))
            except (DatabaseUnavailable, psycopg.OperationalError):
                raise  # the database itself is gone: nothing else can be recovered now
            except DurakitError as exc:
                report.errors[thread_id] = str(exc)
            except Exception as exc:  # one thread's problem must not keep the others waiting
                report.errors[thread_id] = describe_error(exc)
            finally:
                self.locks.release(thread_id)
        return report

    # Time travel and retention

    def fork(self, thread_id: str, to: str, *, checkpoint_id: str | None = None) -> ThreadView:
        """Copy a thread into a new one, from its latest checkpoint or from `checkpoint_id`
        (`durakit history` lists them), to replay it from there.

        The fork inherits the source's ledger, idempotency keys included, and its timers:
        a step the source already made (or started) with the same request is answered from
        the record, or by the outside system under the same key, and never applied twice;
        a step where the fork asks for something else is a new effect of the fork. The
        source is superseded: only the fork goes on (two live threads could each make the
        same refund), so forking again means forking the fork. A fork from a checkpoint
        runs the step after it again (asking a question again, if that step asks one). The
        fork is left `running` with no process on it (`durakit resume` runs it on), or
        `waiting`, or `completed`, as its checkpoint says.
        """
        from durakit.checkpointers.saver import CheckpointNotFound

        check_thread_id(thread_id)
        check_thread_id(to)
        if checkpoint_id is not None and not CHECKPOINT_ID_PATTERN.fullmatch(checkpoint_id):
            raise InvalidInput(f"{checkpoint_id[:80]!r} is not a checkpoint id; `durakit history {thread_id}` lists them.")
        if to == thread_id:
            raise Conflict(f"A fork needs a new thread id, not {thread_id} itself.")
        self._row(thread_id)
        with self.locks.hold(thread_id), self.locks.hold(to):
            source = self._row(thread_id)
            refuse_superseded(source)
            refuse_queued(source)
            template = get_template(source["template"])
            try:
                with self._fenced(thread_id) as conn:
                    if not registry.has_checkpoints(conn, thread_id):
                        raise NotFound(f"Thread {thread_id} has no checkpoints to fork from (pruned, or never started).")
                    created = registry.create(
                        conn, to, template.name, source["request"], source["business_key"],
                        worker_managed=source["worker_managed"],
                    )
                    if not created or registry.has_checkpoints(conn, to):
                        raise Conflict(f"Thread {to} already exists; fork into a new thread id.")
                    with conn.cursor() as cur:
                        self.saver.copy_thread(thread_id, to, until=checkpoint_id, cur=cur)
                    ledger.inherit(conn, thread_id, to)
                    timers.inherit(conn, thread_id, to)
                    registry.supersede(conn, thread_id, to)
                    events.insert(conn, to, "forked", source=thread_id, checkpoint_id=checkpoint_id or "latest")
                    events.insert(conn, thread_id, "forked_to", fork=to, checkpoint_id=checkpoint_id or "latest")
            except CheckpointNotFound:
                raise NotFound(
                    f"Thread {thread_id} has no checkpoint {checkpoint_id}; `durakit history {thread_id}` lists them."
                ) from None
            self.locks.claim(to)
            snapshot = self._graph(template).get_state(self._config(to))
            if snapshot.interrupts or is_finished(snapshot):
                return self._settle(template, to, snapshot)
        return ThreadView.from_row(self._row(to))  # read once the lock is let go: stale, as it is

    def prune(
        self, *, keep: int | None = None, older_than: timedelta | None = None, dry_run: bool = False
    ) -> PruneReport:
        """Give back the space of completed threads (`durakit.retention`): keep the last
        `keep` checkpoints of each, and/or drop every checkpoint of those finished more
        than `older_than` ago. Running, waiting and failed threads are never touched."""
        from durakit import retention

        if keep is None and older_than is None:
            raise InvalidInput("Say what to prune: --keep N, --older-than AGE, or both.")
        if keep is not None and not 1 <= keep <= 1_000_000:
            raise InvalidInput("--keep takes a number from 1 (the latest checkpoint is the thread's state) to 1000000.")
        if older_than is not None and older_than <= timedelta(0):
            raise InvalidInput("--older-than must be a positive age, such as 30d or 12h.")
        return retention.prune(self.pool, self.saver, self.locks, keep=keep, older_than=older_than, dry_run=dry_run)

    def wait_until_released(self, thread_id: str, timeout: float = 10.0) -> bool:
        """Wait until no process holds the thread; False if one still does after `timeout`.

        A process that was killed keeps its lock until PostgreSQL notices the lost
        connection, usually within milliseconds: call this before resuming right after a kill.
        """
        deadline = time.monotonic() + timeout
        while self._row(check_thread_id(thread_id))["lease_held"]:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # Looking at threads

    def status(self, thread_id: str) -> ThreadView:
        """Where the thread stands, with every side effect and how the outside system saw it."""
        view = ThreadView.from_row(self._row(check_thread_id(thread_id)))
        view.effects = thread_effects(self.pool, thread_id)
        view.timers = thread_timers(self.pool, thread_id)
        return view

    def history(self, thread_id: str) -> ThreadView:
        """The thread's status plus its event log, decisions and checkpoints."""
        view = self.status(thread_id)
        event_log = self.events.for_thread(thread_id)
        with self.pool.connection() as conn:
            view.extra = {
                "events": event_log,
                "decisions": registry.decisions(conn, thread_id),
                "checkpoints": registry.checkpoints(conn, thread_id),
            }
        return view

    def threads(
        self, *, status: str | None = None, template: str | None = None, limit: int = PAGE_SIZE, offset: int = 0
    ) -> ThreadPage:
        """A page of the threads, newest first, with how many match in all."""
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"{status!r} is not a thread status; use one of: {', '.join(STATUSES)}.")
        if template is not None:
            check_template_name(template)
        check_page(limit, offset)
        with self.pool.connection() as conn:
            rows, total = registry.list_threads(conn, status=status, template=template, limit=limit, offset=offset)
        return ThreadPage([ThreadView.from_row(row) for row in rows], total, limit, offset)

    def pending(self, *, limit: int = PAGE_SIZE, offset: int = 0) -> ThreadPage:
        """A page of the threads waiting for a person, with the question each one asks (not
        those that only sleep until a timer), oldest first: those nearest their deadlines."""
        check_page(limit, offset)
        with self.pool.connection() as conn:
            rows, total = registry.list_threads(
                conn, status="waiting", waiting_for="person", limit=limit, offset=offset, oldest_first=True
            )
        return ThreadPage([ThreadView.from_row(row) for row in rows], total, limit, offset)

    # Internals

    def _row(self, thread_id: str) -> dict[str, Any]:
        with self.pool.connection() as conn:
            row = registry.get(conn, thread_id)
        if row is None:
            raise NotFound(f"There is no thread {thread_id!r}; `durakit threads` lists them.")
        return row

    @contextmanager
    def _fenced(self, thread_id: str) -> Iterator[psycopg.Connection]:
        """A transaction that commits only while this process still holds the thread's
        lease (`durakit.lease`): a process that lost the thread to another writes nothing."""
        lease = self.locks.lease(thread_id)
        with self.pool.connection() as conn, conn.transaction():
            lease.check(conn)
            yield conn

    def _config(self, thread_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": thread_id}}

    def _graph(self, template: Template) -> CompiledStateGraph:
        if template.name not in self._graphs:
            self._graphs[template.name] = template.builder.compile(checkpointer=self.saver)
        return self._graphs[template.name]

    def _settings(self, template: Template) -> BaseSettings:
        if template.name in self.template_settings:
            return self.template_settings[template.name]
        try:
            return template.settings_model()
        except ValidationError as exc:
            raise InvalidInput(
                f"The {template.name} settings in the environment are invalid: {describe_validation_error(exc)}."
            ) from None

    def _continue(self, row: Mapping[str, Any], kind: str, *, reconnects: int = 0) -> ThreadView:
        """Advance a thread from wherever its last checkpoint left it (lock held)."""
        from langgraph.types import Command

        template = get_template(row["template"])
        settings = self._settings(template)
        thread_id = row["thread_id"]
        snapshot = self._graph(template).get_state(self._config(thread_id))
        if snapshot.created_at is None:
            # It died before its first checkpoint: LangGraph knows nothing of it, but the
            # registry kept the request, so it starts again from the beginning.
            request = template.request_model.model_validate(row["request"], context={"stored": True})
            return self._advance(
                template, thread_id, template.initial_state(request), kind, settings, reconnects=reconnects
            )
        if snapshot.interrupts:
            # Answered but not yet carried out when the process died: answer again.
            with self.pool.connection() as conn:
                answers = {
                    pending.id: answer
                    for pending in snapshot.interrupts
                    if (answer := registry.decision_for(conn, thread_id, pending.id)) is not None
                }
            if not answers:
                return self._settle(template, thread_id, snapshot)
            return self._advance(template, thread_id, Command(resume=answers), kind, settings, reconnects=reconnects)
        if is_finished(snapshot):
            return self._settle(template, thread_id, snapshot)  # only the registry lagged
        return self._advance(template, thread_id, None, kind, settings, reconnects=reconnects)

    def _advance(
        self,
        template: Template,
        thread_id: str,
        graph_input: Any,
        kind: str,
        settings: BaseSettings,
        *,
        reconnects: int = 0,
    ) -> ThreadView:
        """Run the graph until it finishes, waits or fails (lock held), and settle the thread.

        If the database connection is lost on the way (a restart, a terminated session),
        wait for the database to come back, take the thread's lock again and continue from
        the last checkpoint: the ledger makes the repeated part of the step harmless.
        """
        try:
            return self._run_graph(template, thread_id, graph_input, kind, settings)
        except Exception as exc:
            if not is_connection_lost(exc):
                raise
            lost = exc
        if reconnects >= MAX_RECONNECTS:
            if isinstance(lost, LeaseLost):
                raise lost
            raise DatabaseUnavailable(
                f"Lost the database {reconnects + 1} times while advancing thread {thread_id} "
                f"({db.one_line(lost)}); the thread stays running, and `durakit resume {thread_id}` continues it."
            ) from lost
        self._reconnect(thread_id, lost)
        row = self._row(thread_id)
        if row["status"] != "running":
            return ThreadView.from_row(row)  # another process settled it while this one was away
        return self._continue(row, "reconnected", reconnects=reconnects + 1)

    def _reconnect(self, thread_id: str, exc: BaseException) -> None:
        """Wait (with backoff) until the database answers again, then take the thread's lock
        again; raise if the database stays away or another process took the thread meanwhile."""
        deadline = time.monotonic() + self.db_retry_seconds
        delay = 0.2
        while True:
            try:
                db.connect(self.database.url).close()
                break
            except DatabaseUnavailable:
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnavailable(
                        f"Lost the database while advancing thread {thread_id} ({db.one_line(exc)}) and it did not "
                        f"come back within {self.db_retry_seconds:g} seconds; the thread stays running, and "
                        f"`durakit resume {thread_id}` continues it once the database is back."
                    ) from exc
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)
        if self._saver_pool is not None:
            self._saver_pool.check()  # its connections are not pinged on loan: replace the broken ones now
        try:
            self.locks.ensure_held(thread_id)
            return  # only the pool's connections broke; the lock's session lived on
        except LeaseLost:
            pass
        if not self.locks.try_acquire(thread_id):
            raise LeaseLost(
                f"Thread {thread_id} was taken over by another process while this one was disconnected "
                "from the database; that process carries it on."
            ) from exc

    def _run_graph(
        self, template: Template, thread_id: str, graph_input: Any, kind: str, settings: BaseSettings
    ) -> ThreadView:
        from langgraph.errors import GraphDrained, is_invalid_resume
        from langgraph.runtime import RunControl
        from langgraph.types import Command

        lease = self.locks.lease(thread_id)
        with self._fenced(thread_id) as conn:
            registry.start(conn, thread_id, self.owner)
            events.insert(conn, thread_id, kind)
        metrics.run_started(template.name)
        graph = self._graph(template)
        config = {"configurable": {"thread_id": thread_id, LEASE_EPOCH_KEY: lease.epoch}}  # the saver fences with it
        run_events = EventLog(self.pool, lease)

        def ensure_held() -> None:
            self.locks.ensure_held(thread_id)

        context = Services(
            thread_id=thread_id,
            settings=settings,
            ensure_held=ensure_held,
            effects=EffectLedger(self.pool, lease, ensure_held),
            timers=Timers(self.pool, lease),
            events=run_events,
            billing=self.adapters.billing,
            crm=self.adapters.crm,
            notifier=self.adapters.notifier,
            audit=self.adapters.audit,
            calendar=self.adapters.calendar,
            ticketing=self.adapters.ticketing,
            judgement=self.judgement,
        )
        control = RunControl()
        with self._controls_mutex:
            if self._drain_reason is not None:
                control.request_drain(self._drain_reason)
            self._controls.add(control)
        try:
            for update in graph.stream(
                graph_input, config, context=context, stream_mode="updates", durability="sync", control=control
            ):
                for node in update:
                    if node != "__interrupt__":
                        run_events.record(thread_id, "node_finished", node)
        except GraphDrained as drained:
            with self._fenced(thread_id) as conn:
                events.insert(conn, thread_id, "handed_back", reason=drained.reason)
                jobs.defer_advance(conn, thread_id, "handed_back")
            return ThreadView.from_row(self._row(thread_id))  # running, and queued for another worker
        except Exception as exc:
            if is_connection_lost(exc):
                raise  # the caller reconnects; another process may own the thread by now
            if is_invalid_resume(exc) and isinstance(graph_input, Command):
                return self._withdraw_answers(template, thread_id, graph_input, exc)
            return self._fail(template, thread_id, exc)
        finally:
            with self._controls_mutex:
                self._controls.discard(control)
        view = self._settle(template, thread_id, graph.get_state(config))
        metrics.run_ended(template.name, view.status)
        return view

    def _withdraw_answers(self, template: Template, thread_id: str, command: Command, exc: Exception) -> ThreadView:
        """The node refused a recorded answer (its model changed since): forget the answer,
        so the question can be answered again, and report the thread as waiting."""
        with self._fenced(thread_id) as conn:
            for interrupt_id in command.resume:
                registry.withdraw_decision(conn, thread_id, interrupt_id)
            events.insert(conn, thread_id, "answer_refused", error=describe_error(exc))
        return self._settle(template, thread_id, self._graph(template).get_state(self._config(thread_id)))

    def _settle(self, template: Template, thread_id: str, snapshot: StateSnapshot) -> ThreadView:
        """Write where the checkpoint says the thread stands into the registry."""
        faults.maybe_kill("__settle__", "before")
        with self._fenced(thread_id) as conn:
            if snapshot.interrupts:
                pending = snapshot.interrupts[0]
                node = next((task.name for task in snapshot.tasks if task.interrupts), None)
                value = pending.value if isinstance(pending.value, dict) else {"question": str(pending.value)}
                interrupt = {"id": pending.id, "node": node, **value, "answer_schema": pending.response_schema}
                # A thread that only sleeps (until a reminder, a follow-up) has done its business:
                # its result so far is shown while it waits.
                result = None if interrupt.get("decisions") else template.summarize(snapshot.values)
                registry.settle(conn, thread_id, "waiting", interrupt=interrupt, result=result)
                if interrupt.get("timer") and registry.decision_for(conn, thread_id, pending.id) is None:
                    # It waits on this timer: make sure it fires, even if an earlier run that died
                    # before this interrupt was saved (or this thread's fork source) used it up.
                    timers.arm(conn, thread_id, interrupt["timer"], rearm=True)
                events.insert(conn, thread_id, "interrupted", node, interrupt_id=pending.id)
            elif not is_finished(snapshot):
                failed = next((task for task in snapshot.tasks if task.error), None)
                error = describe_error(failed.error) if failed else "The run stopped before finishing."
                registry.settle(conn, thread_id, "failed", error=error, error_node=failed.name if failed else None)
            else:
                registry.settle(conn, thread_id, "completed", result=template.summarize(snapshot.values))
                timers.cancel_all(conn, thread_id)  # nothing is left to wake
                events.insert(conn, thread_id, "completed")
        return ThreadView.from_row(self._row(thread_id))

    def _fail(self, template: Template, thread_id: str, exc: Exception) -> ThreadView:
        """The run raised: mark the thread failed with the error and the node it came from."""
        node = None
        try:
            snapshot = self._graph(template).get_state(self._config(thread_id))
            node = next((task.name for task in snapshot.tasks if task.error), None)
        except psycopg.Error:
            pass  # the database may be why it failed; the error itself still gets recorded
        error = describe_error(exc)
        with self._fenced(thread_id) as conn:
            registry.settle(conn, thread_id, "failed", error=error, error_node=node)
            events.insert(conn, thread_id, "failed", node, error=error)
            self._schedule_retry(conn, template, thread_id, exc, node)
        metrics.run_ended(template.name, "failed")
        return ThreadView.from_row(self._row(thread_id))

    def _schedule_retry(
        self, conn: psycopg.Connection, template: Template, thread_id: str, exc: Exception, node: str | None
    ) -> None:
        """In the transaction that marks the thread failed: if the cause is transient, queue
        a worker's retry on the template's backoff (`durakit.retries`), unless its automatic
        retries are used up."""
        from durakit.retries import AUTO_RETRY, TemplateSettings
        from durakit.steps import is_transient

        if not is_transient(exc):
            registry.plan_no_retry(conn, thread_id)
            return
        settings = self._settings(template)
        if not isinstance(settings, TemplateSettings):  # a template of its own, on plain BaseSettings
            settings = TemplateSettings.model_construct()
        made, limit = registry.retries_made(conn, thread_id), settings.auto_retries
        if made >= limit:
            registry.plan_no_retry(conn, thread_id, limit_reached=limit)
            events.insert(conn, thread_id, "retries_exhausted", node, retries=made, limit=limit)
            return
        retry_at = registry.plan_retry(
            conn, thread_id, delay=settings.auto_retry_delay(made + 1), retry=made + 1, limit=limit
        )
        jobs.defer_retry(conn, thread_id, AUTO_RETRY, retry_at)
        events.insert(conn, thread_id, "retry_planned", node, at=retry_at.isoformat(timespec="seconds"),
                      retry=made + 1, limit=limit)


def is_workable(row: Mapping[str, Any]) -> bool:
    """A worker may run the thread: it runs (or its process died), or it failed and waits
    for an automatic retry."""
    if row["superseded_by"]:
        return False
    return row["status"] == "running" or (row["status"] == "failed" and row["retry_at"] is not None)


def is_finished(snapshot: StateSnapshot) -> bool:
    """True once the graph has nothing left to run.

    Not `not snapshot.next`: a process that died after a node's writes were saved but
    before the next checkpoint leaves a snapshot whose `next` omits that node (its
    output is already applied) and does not yet name the nodes after it.
    """
    return not snapshot.tasks


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {db.one_line(exc)}"[:1000]
