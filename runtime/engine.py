"""The engine: the one part of durakit that runs LangGraph.

It advances a thread whose lock this process holds (`durakit.lease`): runs the graph with
durability="sync" (each finished step is on disk before the next starts), every write
fenced by the run's lease; settles the thread's registry row from the checkpoint; marks
it failed (planning a worker's retry for a transient cause); and when the database goes
away mid-run, waits for it, takes the lock again and goes on from the last checkpoint.
The façade (`durakit.runner`) decides whether an operation may happen
(`durakit.lifecycle`); the engine only carries it out.

LangGraph and the templates are imported where a thread is advanced: looking at threads
(status, history, threads, pending) reads durakit's tables and needs neither, so those
commands start in a fraction of the time.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import ValidationError

from durakit import db, encryption, events, faults, jobs, ledger, metrics, registry, timers
from durakit.checkpointers import open_pool
from durakit.errors import Conflict, DatabaseUnavailable, InvalidInput, LeaseLost, NotFound, describe_error
from durakit.events import EventLog
from durakit.graphs import get_template
from durakit.judgement import Judgement
from durakit.lease import LEASE_EPOCH_KEY, ThreadLocks
from durakit.ledger import EffectLedger
from durakit.record import Question, Status, ThreadRecord
from durakit.services import Adapters, Services
from durakit.settings import KitSettings
from durakit.timers import Timers
from durakit.validation import describe_validation_error
from durakit.views import ThreadView

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph
    from langgraph.runtime import RunControl
    from langgraph.types import Command, StateSnapshot
    from pydantic_settings import BaseSettings

    from durakit.checkpointers.saver import DurakitSaver
    from durakit.templates import Template, TemplateRequest

# How often one command reconnects after losing the database before it gives the thread
# back (still `running`, for `durakit resume` or `recover`).
MAX_RECONNECTS = 10


def is_connection_lost(exc: BaseException) -> bool:
    """The database went away under a run: its connections broke, or the session holding
    the thread's lock ended (or another process took the thread over)."""
    return isinstance(exc, LeaseLost) or db.is_connection_lost(exc)


class Engine:
    def __init__(
        self,
        database: db.Database,
        pool: ConnectionPool,
        locks: ThreadLocks,
        *,
        kit_settings: KitSettings,
        adapters: Adapters,
        judgement: Judgement,
        template_settings: dict[str, BaseSettings],
    ) -> None:
        self.database = database
        self.pool = pool
        self.locks = locks
        self.kit_settings = kit_settings
        self.adapters = adapters
        self.judgement = judgement
        self.template_settings = template_settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._saver: DurakitSaver | None = None
        self._saver_pool: ConnectionPool | None = None
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

    def close(self) -> None:
        if self._saver_pool is not None:
            self._saver_pool.close()

    # What the façade asks of it

    def record(self, thread_id: str) -> ThreadRecord:
        with self.pool.connection() as conn:
            record = registry.record(conn, thread_id)
        if record is None:
            raise NotFound(f"There is no thread {thread_id!r}; `durakit threads` lists them.")
        return record

    def view(self, thread_id: str) -> ThreadView:
        return ThreadView.from_record(self.record(thread_id))

    @contextmanager
    def fenced(self, thread_id: str) -> Iterator[psycopg.Connection]:
        """A transaction that commits only while this process still holds the thread's
        lease (`durakit.lease`): a process that lost the thread to another writes nothing."""
        lease = self.locks.lease(thread_id)
        with self.pool.connection() as conn, conn.transaction():
            lease.check(conn)
            yield conn

    def graph(self, template: Template) -> CompiledStateGraph:
        if template.name not in self._graphs:
            self._graphs[template.name] = template.builder.compile(checkpointer=self.saver)
        return self._graphs[template.name]

    def snapshot(self, template: Template, thread_id: str, *, fenced: bool = False) -> StateSnapshot:
        return self.graph(template).get_state(self.config(thread_id, fenced=fenced))

    def config(self, thread_id: str, *, fenced: bool = False) -> dict[str, Any]:
        """The run's LangGraph config; `fenced`, with the lease generation the saver fences with."""
        configurable: dict[str, Any] = {"thread_id": thread_id}
        if fenced:
            configurable[LEASE_EPOCH_KEY] = self.locks.lease(thread_id).epoch
        return {"configurable": configurable}

    def settings(self, template: Template) -> BaseSettings:
        if template.name in self.template_settings:
            return self.template_settings[template.name]
        try:
            return template.settings_model()
        except ValidationError as exc:
            raise InvalidInput(
                f"The {template.name} settings in the environment are invalid: {describe_validation_error(exc)}."
            ) from None

    def warm_up(self) -> None:
        """Load LangGraph, the saver and every template's graph now, so that a worker's
        first job does not wait a second and a half for them."""
        from durakit.graphs import MODULES

        for name in MODULES:
            self.graph(get_template(name))

    def drain(self, reason: str) -> None:
        """Stop every run of this process at its next step boundary (the step's checkpoint
        saved) and queue the rest of each thread for another worker; runs asked for after
        this stop before their first step."""
        with self._controls_mutex:
            self._drain_reason = reason
            for control in self._controls:
                control.request_drain(reason)

    # Advancing a thread (its lock held)

    def go_on(self, record: ThreadRecord, kind: str, *, reconnects: int = 0) -> ThreadView:
        """Advance a thread from wherever its last checkpoint left it."""
        from langgraph.types import Command

        template = get_template(record.template)
        settings = self.settings(template)
        thread_id = record.thread_id
        snapshot = self.snapshot(template, thread_id)
        if snapshot.created_at is None:
            # It died before its first checkpoint: LangGraph knows nothing of it, but the
            # registry kept the request, so it starts again from the beginning.
            request = template.request_model.model_validate(record.request, context={"stored": True})
            return self.advance(template, thread_id, template.initial_state(request), kind, settings,
                                reconnects=reconnects)
        if snapshot.interrupts:
            # Answered but not yet carried out when the process died: answer again.
            with self.pool.connection() as conn:
                answers = {
                    pending.id: answer
                    for pending in snapshot.interrupts
                    if (answer := registry.decision_for(conn, thread_id, pending.id)) is not None
                }
            if not answers:
                return self.settle(template, thread_id, snapshot)
            return self.advance(template, thread_id, Command(resume=answers), kind, settings, reconnects=reconnects)
        if is_finished(snapshot):
            return self.settle(template, thread_id, snapshot)  # only the registry lagged
        return self.advance(template, thread_id, None, kind, settings, reconnects=reconnects)

    def advance(
        self,
        template: Template,
        thread_id: str,
        graph_input: Any,
        kind: str,
        settings: BaseSettings,
        *,
        reconnects: int = 0,
    ) -> ThreadView:
        """Run the graph until it finishes, waits or fails, and settle the thread.

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
        record = self.record(thread_id)
        if record.status is not Status.RUNNING:
            return ThreadView.from_record(record)  # another process settled it while this one was away
        return self.go_on(record, "reconnected", reconnects=reconnects + 1)

    def settle(self, template: Template, thread_id: str, snapshot: StateSnapshot) -> ThreadView:
        """Write where the checkpoint says the thread stands into the registry. Timers go
        first, so the record the registry hands back says when the thread wakes next."""
        faults.maybe_kill("__settle__", "before")
        with self.fenced(thread_id) as conn:
            if snapshot.interrupts:
                pending = snapshot.interrupts[0]
                node = next((task.name for task in snapshot.tasks if task.interrupts), None)
                interrupt = Question.to_interrupt(pending.id, node, pending.value, pending.response_schema)
                question = Question.from_interrupt(interrupt)
                if question.timer and registry.decision_for(conn, thread_id, pending.id) is None:
                    # It waits on this timer: make sure it fires, even if an earlier run that died
                    # before this interrupt was saved (or this thread's fork source) used it up.
                    timers.arm(conn, thread_id, question.timer, rearm=True)
                # A thread that only sleeps (until a reminder, a follow-up) has done its business:
                # its result so far is shown while it waits.
                result = None if question.for_person else template.summarize(snapshot.values)
                record = registry.settle(conn, thread_id, Status.WAITING, interrupt=interrupt, result=result)
                events.insert(conn, thread_id, "interrupted", node, interrupt_id=pending.id)
            elif not is_finished(snapshot):
                failed = next((task for task in snapshot.tasks if task.error), None)
                error = describe_error(failed.error) if failed else "The run stopped before finishing."
                record = registry.settle(conn, thread_id, Status.FAILED, error=error,
                                         error_node=failed.name if failed else None)
            else:
                timers.cancel_all(conn, thread_id)  # nothing is left to wake
                record = registry.settle(conn, thread_id, Status.COMPLETED, result=template.summarize(snapshot.values))
                events.insert(conn, thread_id, "completed")
        return ThreadView.from_record(record)

    # What the façade's operations write (lock held, the lifecycle rules passed)

    def register(
        self, template: Template, parsed: TemplateRequest, thread_id: str, *, queue: bool
    ) -> ThreadView | None:
        """Register a new thread (and with `queue`, its first job); None if it was new,
        else the existing thread, which must be for the same request."""
        with self.pool.connection() as conn:
            with conn.transaction():
                created = registry.create(conn, thread_id, template.name, parsed.model_dump(mode="json"),
                                          parsed.business_key(), worker_managed=queue)
                if created and queue:
                    jobs.defer_advance(conn, thread_id, "run_started")
            existing = None if created else registry.record(conn, thread_id)
        if existing is None:
            return None
        stored = template.request_model.model_validate(existing.request, context={"stored": True})
        if existing.template != template.name or stored != parsed:
            raise Conflict(
                f"Thread {thread_id} already exists for a different request; "
                "pass another --thread-id (or a ticket_id) to start a new one."
            )
        return ThreadView.from_record(existing)


    def record_answer(
        self, thread_id: str, asked: Question, answer: dict[str, Any], authorized_as: list[str], *, queue: bool
    ) -> ThreadRecord | None:
        """Record a person's answer to `asked` once (and with `queue`, the run that carries it
        out); the thread as it stands then if its run was queued, else None."""
        with self.fenced(thread_id) as conn:
            if not registry.record_decision(conn, thread_id, dict(asked.stored), answer, authorized_as):
                earlier = registry.who_decided(conn, thread_id, asked.interrupt_id) or {}
                raise Conflict(
                    f"Thread {thread_id}'s question was answered already by {earlier.get('decided_by')} "
                    f"at {earlier.get('decided_at')}."
                )
            events.insert(conn, thread_id, "decided", asked.node, decision=answer["decision"], by=answer["by"],
                          note=answer["note"], question_id=asked.name)
            if not queue:
                return None
            jobs.defer_advance(conn, thread_id, "resumed")
            return registry.record(conn, thread_id)  # read before a worker takes it

    def fire_timer(self, record: ThreadRecord, name: str) -> ThreadView | None:
        """Fire the timer if `lifecycle.on_timer` says so and run the thread on from there."""
        from durakit.lifecycle import TimerMove, on_timer

        thread_id = record.thread_id
        if self._wake_completed_before_workers(record, name):
            record = self.record(thread_id)  # now asleep in the node that waits on this timer
        with self.fenced(thread_id) as conn:
            timer = timers.get(conn, thread_id, name)
            move, answer = on_timer(record, timer)
            if move is TimerMove.REARM:
                timers.arm(conn, thread_id, name)  # moved later while its job ran: a job for then
            elif move is TimerMove.CANCEL:
                timers.cancel(conn, thread_id, name)
                events.insert(conn, thread_id, "timer_cancelled", timer["node"], timer=name)
            elif move is TimerMove.FIRE:
                registry.record_decision(conn, thread_id, dict(record.question.stored), answer, ["timer"])
                timers.mark_fired(conn, thread_id, name)
                events.insert(conn, thread_id, "timer_fired", timer["node"], timer=name, due_at=timer["due_at"],
                              decision=answer["decision"])
        return self.go_on(self.record(thread_id), "woken") if move is TimerMove.FIRE else None

    def _wake_completed_before_workers(self, record: ThreadRecord, name: str) -> bool:
        """A thread that completed before workers with this timer pending, now due (its
        template then only recorded it): carry it on from the node it ended in, into the
        node that sleeps until the timer today (`timers.BEFORE_WORKERS`), so that firing
        it does what the template does now. True if it did."""
        if record.status is not Status.COMPLETED or record.superseded_by:
            return False
        with self.pool.connection() as conn:
            timer = timers.get(conn, record.thread_id, name)
        old = timers.before_workers(record.template, timer) if timer else None
        if old is None or old.ended_in is None or timer["status"] != "scheduled" or not timer["due"]:
            return False
        graph = self.graph(get_template(record.template))
        # What the template does after that node now, saved under this process's lease.
        graph.update_state(self.config(record.thread_id, fenced=True), None, as_node=old.ended_in)
        self.go_on(self.record(record.thread_id), "woken")  # to the sleep, which keeps the timer as it is
        return True

    def fork(self, source: ThreadRecord, to: str, checkpoint_id: str | None) -> ThreadView | None:
        """Copy the source into `to` (both locked) and supersede it; the fork's view if its
        checkpoint says it waits or is done, else None (it is left `running`, with no
        process on it, for `durakit resume`).

        The fork inherits the source's ledger, idempotency keys included, and its timers:
        a step the source already made (or started) with the same request is answered from
        the record, or by the outside system under the same key, and never applied twice;
        a step where the fork asks for something else is a new effect of the fork. Only
        the fork goes on (two live threads could each make the same refund), so forking
        again means forking the fork. A fork from a checkpoint runs the step after it
        again (asking a question again, if that step asks one)."""
        from durakit.errors import CheckpointNotFound

        thread_id = source.thread_id
        template = get_template(source.template)
        try:
            with self.fenced(thread_id) as conn:
                if not registry.has_checkpoints(conn, thread_id):
                    raise NotFound(f"Thread {thread_id} has no checkpoints to fork from (pruned, or never started).")
                created = registry.create(conn, to, template.name, source.request, source.business_key,
                                          worker_managed=source.worker_managed)
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
        snapshot = self.snapshot(template, to)
        return self.settle(template, to, snapshot) if snapshot.interrupts or is_finished(snapshot) else None

    # Internals

    def _reconnect(self, thread_id: str, exc: BaseException) -> None:
        """Wait (with backoff) until the database answers again, then take the thread's lock
        again; raise if the database stays away or another process took the thread meanwhile."""
        retry_seconds = self.kit_settings.db_retry_seconds
        deadline = time.monotonic() + retry_seconds
        delay = 0.2
        while True:
            try:
                db.connect(self.database.url).close()
                break
            except DatabaseUnavailable:
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnavailable(
                        f"Lost the database while advancing thread {thread_id} ({db.one_line(exc)}) and it did not "
                        f"come back within {retry_seconds:g} seconds; the thread stays running, and "
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

        with self.fenced(thread_id) as conn:
            registry.start(conn, thread_id, self.owner)
            events.insert(conn, thread_id, kind)
        metrics.run_started(template.name)
        graph = self.graph(template)
        config = self.config(thread_id, fenced=True)
        context = self._services(thread_id, settings)
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
                        context.events.record(thread_id, "node_finished", node)
        except GraphDrained as drained:
            with self.fenced(thread_id) as conn:
                events.insert(conn, thread_id, "handed_back", reason=drained.reason)
                jobs.defer_advance(conn, thread_id, "handed_back")
            return self.view(thread_id)  # running, and queued for another worker
        except Exception as exc:
            if is_connection_lost(exc):
                raise  # the caller reconnects; another process may own the thread by now
            if is_invalid_resume(exc) and isinstance(graph_input, Command):
                return self._withdraw_answers(template, thread_id, graph_input, exc)
            return self._fail(template, thread_id, exc)
        finally:
            with self._controls_mutex:
                self._controls.discard(control)
        view = self.settle(template, thread_id, graph.get_state(config))
        metrics.run_ended(template.name, view.status)
        return view

    def _services(self, thread_id: str, settings: BaseSettings) -> Services:
        """What the run's nodes reach through `runtime.context`, every write fenced by its lease."""
        lease = self.locks.lease(thread_id)

        def ensure_held() -> None:
            self.locks.ensure_held(thread_id)

        return Services(
            thread_id=thread_id,
            settings=settings,
            ensure_held=ensure_held,
            effects=EffectLedger(self.pool, lease, ensure_held),
            timers=Timers(self.pool, lease),
            events=EventLog(self.pool, lease),
            adapters=self.adapters,
            judgement=self.judgement,
        )

    def _withdraw_answers(self, template: Template, thread_id: str, command: Command, exc: Exception) -> ThreadView:
        """The node refused a recorded answer (its model changed since): forget the answer,
        so the question can be answered again, and report the thread as waiting."""
        with self.fenced(thread_id) as conn:
            for interrupt_id in command.resume:
                registry.withdraw_decision(conn, thread_id, interrupt_id)
            events.insert(conn, thread_id, "answer_refused", error=describe_error(exc))
        return self.settle(template, thread_id, self.snapshot(template, thread_id))

    def _fail(self, template: Template, thread_id: str, exc: Exception) -> ThreadView:
        """The run raised: mark the thread failed with the error and the node it came from."""
        node = None
        try:
            node = next((task.name for task in self.snapshot(template, thread_id).tasks if task.error), None)
        except psycopg.Error:
            pass  # the database may be why it failed; the error itself still gets recorded
        error = describe_error(exc)
        with self.fenced(thread_id) as conn:
            registry.settle(conn, thread_id, Status.FAILED, error=error, error_node=node)
            events.insert(conn, thread_id, "failed", node, error=error)
            self._schedule_retry(conn, template, thread_id, exc, node)
        metrics.run_ended(template.name, Status.FAILED)
        return self.view(thread_id)

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
        settings = self.settings(template)
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

    def forget_retries(self, thread_id: str) -> None:
        """The thread got past its failure, or a person retries it now: the automatic count
        starts again, and a queued retry is withdrawn."""
        from durakit.retries import AUTO_RETRY

        with self.fenced(thread_id) as conn:
            if registry.forget_retries(conn, thread_id):
                jobs.cancel_retry(conn, thread_id, AUTO_RETRY)


def is_finished(snapshot: StateSnapshot) -> bool:
    """True once the graph has nothing left to run.

    Not `not snapshot.next`: a process that died after a node's writes were saved but
    before the next checkpoint leaves a snapshot whose `next` omits that node (its
    output is already applied) and does not yet name the nodes after it.
    """
    return not snapshot.tasks


