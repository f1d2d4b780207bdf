"""The runner: durakit's Python API, the façade every surface calls (the CLI is a thin
skin over it, and so will the HTTP API be).

    from durakit import Runner

    with Runner.open() as runner:
        view = runner.run("refund", {"order_id": "ORD-1", "amount": "250.00", "reason": "broken"})
        if view.status == "waiting":
            view = runner.approve(view.thread_id, "approve", by="dana", question=view.question_id)

Each operation checks its input (`durakit.validation`), takes the thread's lock
(`durakit.lease`), reads the thread's record once, asks the lifecycle rules whether it may
happen (`durakit.lifecycle`), and has the engine carry it out (`durakit.engine`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import PoolTimeout

from durakit import db, encryption, faults, lifecycle, registry, timers
from durakit.adapters.sandbox import Sandbox
from durakit.checkpointers import open_pool
from durakit.engine import Engine
from durakit.errors import Conflict, DatabaseUnavailable, DurakitError, InvalidInput, NotFound, describe_error
from durakit.events import EventLog
from durakit.graphs import check_template_name, get_template
from durakit.judgement import Judgement, judgement_from_env
from durakit.lease import ThreadLocks
from durakit.ledger import thread_effects
from durakit.record import Status, WaitingFor
from durakit.services import Adapters
from durakit.settings import KitSettings
from durakit.timers import thread_timers
from durakit.validation import (
    PAGE_SIZE,
    check_answer,
    check_checkpoint_id,
    check_page,
    check_prune,
    check_question_id,
    check_thread_id,
    parse_request,
)
from durakit.views import RecoveryReport, ThreadPage, ThreadView

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

    from durakit.authority import Authority
    from durakit.checkpointers.saver import DurakitSaver
    from durakit.retention import PruneReport
    from durakit.templates import Template


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
        self.locks = ThreadLocks(database.url)
        self.events = EventLog(self.pool)
        self.sandbox = Sandbox(self.pool)
        self.engine = Engine(
            database, self.pool, self.locks, kit_settings=kit_settings,
            adapters=adapters or Adapters.all(self.sandbox),
            judgement=judgement or judgement_from_env(), template_settings=dict(template_settings or {}),
        )
        self.authority = authority  # None: read from the environment when first needed
        self.home = kit_settings.home

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
        self.engine.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # What tests and embedders swap or read: the outside systems, settings, the saver.

    @property
    def adapters(self) -> Adapters:
        return self.engine.adapters

    @adapters.setter
    def adapters(self, adapters: Adapters) -> None:
        self.engine.adapters = adapters

    @property
    def template_settings(self) -> dict[str, BaseSettings]:
        return self.engine.template_settings

    @property
    def saver(self) -> DurakitSaver:
        return self.engine.saver

    @property
    def owner(self) -> str:
        return self.engine.owner

    # Starting, resuming and answering threads

    def run(
        self, template_name: str, request: str | Mapping[str, Any], *, thread_id: str | None = None
    ) -> ThreadView:
        """Start a thread for `request` and run it in this process until it finishes or
        waits; the same request again reaches the same thread."""
        template = get_template(template_name)
        parsed = parse_request(template, request)
        settings = self.engine.settings(template)
        thread_id = check_thread_id(template.thread_id_for(parsed) if thread_id is None else thread_id)
        with self.locks.hold(thread_id):
            existing = self.engine.register(template, parsed, thread_id, queue=False)
            if existing is not None:
                return existing
            self.locks.claim(thread_id)  # registered under the lock: its writes are fenced from here
            faults.maybe_kill("__start__", "before")  # registered, no checkpoint yet
            return self.engine.advance(template, thread_id, template.initial_state(parsed), "run_started", settings)

    def submit(
        self, template_name: str, request: str | Mapping[str, Any], *, thread_id: str | None = None
    ) -> ThreadView:
        """Start a thread for `request` and queue its run for the workers (`durakit
        worker`); returns at once. The thread is worker-managed: answers to it are queued
        for the workers too. The same request again reaches the same thread."""
        template = get_template(template_name)
        parsed = parse_request(template, request)
        self.engine.settings(template)  # refuse broken settings before anything is queued
        thread_id = check_thread_id(template.thread_id_for(parsed) if thread_id is None else thread_id)
        return self.engine.register(template, parsed, thread_id, queue=True) or self.engine.view(thread_id)

    def resume(self, thread_id: str) -> ThreadView:
        """Continue a thread that failed or whose process died, from its last checkpoint."""
        self.engine.record(check_thread_id(thread_id))  # unknown thread: NotFound before taking any lock
        with self.locks.hold(thread_id):
            record = self.engine.record(thread_id)
            lifecycle.can_resume(record)
            if record.status is Status.FAILED:
                self.engine.forget_retries(thread_id)  # a person retries it now: the automatic count starts again
            return self.engine.go_on(record, "resumed")

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
        with self.locks.hold(thread_id):  # an unknown thread: NotFound below, once the lock is taken
            record = self.engine.record(thread_id)
            asked = lifecycle.can_approve(record, decision, question)
            template = get_template(record.template)
            settings = self.engine.settings(template)
            if asked.interrupt_id not in {pending.id for pending in self.engine.snapshot(template, thread_id).interrupts}:
                raise Conflict(f"The question thread {thread_id} asked has been answered already.")
            answer = check_answer(template, asked.node, {"decision": decision, "by": by, "note": note})
            authorized_as = self._authorize(template, thread_id, dict(asked.stored), answer)
            queue = record.worker_managed and not wait
            queued = self.engine.record_answer(thread_id, asked, answer, authorized_as, queue=queue)
            if queued is not None:
                view = ThreadView.from_record(queued)  # running, and queued for a worker
            else:
                view = self.engine.advance(template, thread_id, Command(resume={asked.interrupt_id: answer}),
                                           "resumed", settings)
            view.extra["answered"] = {"question_id": asked.name, "interrupt_id": asked.interrupt_id,
                                      "node": asked.node, "question": asked.text, "decision": answer["decision"]}
            return view

    def _authorize(
        self, template: Template, thread_id: str, interrupt: dict[str, Any], answer: dict[str, Any]
    ) -> list[str]:
        """The roles that let the answer's author answer; refused answers are logged."""
        from durakit.authority import Authority
        from durakit.errors import NotAuthorized

        if self.authority is None:
            self.authority = Authority.from_env(self.home)
        try:
            return self.authority.check(template.name, interrupt, answer["by"])
        except NotAuthorized as exc:
            self.events.record(thread_id, "decision_refused", interrupt.get("node"), decision=answer["decision"],
                               by=answer["by"], reason=str(exc))
            raise

    # What workers do (`durakit.worker`)

    def work(self, thread_id: str, kind: str, *, lock_wait: float = 2.0) -> ThreadView | None:
        """Run a `running` thread on from its checkpoint (a queued run or answer, a run
        whose process died), or a `failed` one whose automatic retry is planned; None if
        there is nothing to run. Waits up to `lock_wait` seconds for a process that still
        holds the thread (an `approve` that queued this run lets go of it a moment later),
        then raises ThreadBusy."""
        if not lifecycle.is_workable(self.engine.record(check_thread_id(thread_id))):
            return None
        with self.locks.hold(thread_id, wait=lock_wait):
            record = self.engine.record(thread_id)
            if not lifecycle.is_workable(record):
                return None  # another process ran it meanwhile, or a person resumed it
            view = self.engine.go_on(record, kind)
            if view.status is not Status.FAILED and record.auto_retries:
                self.engine.forget_retries(thread_id)  # it got past the failure: a later one counts afresh
            return view

    def fire_timer(self, thread_id: str, name: str, *, lock_wait: float = 2.0) -> ThreadView | None:
        """Fire the thread's timer `name` if it is due, and run the thread on from there;
        None if there is nothing to fire (not due yet, cancelled or fired already, or the
        thread no longer waits for it, say because a person answered before the deadline)."""
        with self.locks.hold(check_thread_id(thread_id), wait=lock_wait):
            return self.engine.fire_timer(self.engine.record(thread_id), name)

    def move_timer(self, thread_id: str, name: str, due_at: datetime) -> None:
        """Move a scheduled timer (and the job that fires it) to `due_at`: to fire a
        reminder early, or to put a deadline off."""
        if due_at.tzinfo is None:
            raise InvalidInput("Give the new due time with its time zone (for example 2026-12-01T09:00:00+00:00).")
        with self.pool.connection() as conn, conn.transaction():
            if not timers.move(conn, check_thread_id(thread_id), name, due_at):
                raise NotFound(f"Thread {thread_id} has no scheduled timer {name!r}; `durakit timers` lists them.")

    def warm_up(self) -> None:
        """Load LangGraph, the saver and every template's graph now (a worker, before its first job)."""
        self.engine.warm_up()

    def list_timers(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Every timer still to fire, soonest first."""
        return timers.scheduled(self.pool, limit)

    def drain(self, reason: str = "shutdown") -> None:
        """Stop every run of this process at its next step boundary and queue the rest."""
        self.engine.drain(reason)

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
                record = self.engine.record(thread_id)
                if record.status is Status.RUNNING:
                    report.resumed.append(self.engine.go_on(record, "recovered"))
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
        (`durakit history` lists them), to replay it from there; the source is superseded
        and the fork inherits its ledger and timers (`Engine.fork` says how)."""
        check_thread_id(thread_id)
        check_thread_id(to)
        if checkpoint_id is not None:
            check_checkpoint_id(checkpoint_id, thread_id)
        if to == thread_id:
            raise Conflict(f"A fork needs a new thread id, not {thread_id} itself.")
        with self.locks.hold(thread_id), self.locks.hold(to):
            source = self.engine.record(thread_id)
            lifecycle.can_fork(source)
            settled = self.engine.fork(source, to, checkpoint_id)
            if settled is not None:
                return settled
        return self.engine.view(to)  # read once the lock is let go: stale, as it is

    def prune(
        self, *, keep: int | None = None, older_than: timedelta | None = None, dry_run: bool = False
    ) -> PruneReport:
        """Give back the space of completed threads (`durakit.retention`): keep the last
        `keep` checkpoints of each, and/or drop every checkpoint of those finished more
        than `older_than` ago. Running, waiting and failed threads are never touched."""
        from durakit import retention

        check_prune(keep, older_than)
        return retention.prune(self.pool, self.saver, self.locks, keep=keep, older_than=older_than, dry_run=dry_run)

    def wait_until_released(self, thread_id: str, timeout: float = 10.0) -> bool:
        """Wait until no process holds the thread; False if one still does after `timeout`.

        A process that was killed keeps its lock until PostgreSQL notices the lost
        connection, usually within milliseconds: call this before resuming right after a kill.
        """
        deadline = time.monotonic() + timeout
        while self.engine.record(check_thread_id(thread_id)).lease_held:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # Looking at threads

    def status(self, thread_id: str) -> ThreadView:
        """Where the thread stands, with every side effect and how the outside system saw it."""
        view = self.engine.view(check_thread_id(thread_id))
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
        if status is not None and status not in set(Status):
            raise InvalidInput(f"{status!r} is not a thread status; use one of: {', '.join(Status)}.")
        if template is not None:
            check_template_name(template)
        check_page(limit, offset)
        with self.pool.connection() as conn:
            records, total = registry.list_threads(conn, status=status, template=template, limit=limit, offset=offset)
        return ThreadPage([ThreadView.from_record(record) for record in records], total, limit, offset)

    def pending(self, *, limit: int = PAGE_SIZE, offset: int = 0) -> ThreadPage:
        """A page of the threads waiting for a person, with the question each one asks (not
        those that only sleep until a timer), oldest first: those nearest their deadlines."""
        check_page(limit, offset)
        with self.pool.connection() as conn:
            records, total = registry.list_threads(conn, status=Status.WAITING, waiting_for=WaitingFor.PERSON,
                                                   limit=limit, offset=offset, oldest_first=True)
        return ThreadPage([ThreadView.from_record(record) for record in records], total, limit, offset)
