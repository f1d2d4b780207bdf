"""`durakit worker`: a long-running process that takes jobs from the queue and advances
threads, on procrastinate.

    with Runner.open() as runner:
        Worker(runner, concurrency=4).run()   # until SIGTERM or SIGINT

What it does:

- runs `advance` jobs (a submitted run, a queued answer, a run handed back) and
  `fire_timer` jobs (a reminder, a follow-up, a deadline) with `Runner.work` and
  `Runner.fire_timer`, which take the thread's lock as every other command does;
- wakes at once when a job is queued (procrastinate LISTENs for the NOTIFY its insert
  trigger sends), and polls every `poll_interval` seconds for timers falling due;
- beats every `heartbeat` seconds; every `sweep_interval` seconds it hands back the jobs
  of workers silent for `stalled_after` seconds and queues a run for every `running`
  thread nobody holds and no job will run (its process died). A killed worker's threads
  are taken over at once (its lock sessions ended with it); a frozen or cut-off worker's
  jobs are handed back too, but its threads stay held until its database sessions end
  (it wakes, is killed, or the server notices the lost connection), and the handed-back
  job retries until then;
- outlives a database outage of any length: when the database goes away it says so once,
  tries again with capped backoff, says once that it is back, and takes jobs again (the
  jobs it had taken go back to the queue, and each thread goes on from its checkpoint);
- on SIGTERM or SIGINT stops taking jobs, stops each run at its next step boundary (the
  step's checkpoint saved), queues the rest for another worker, and exits.

procrastinate keeps two jobs of one thread from running at once (each job is locked on
its thread id); the thread's own lock (`durakit.lease`) keeps a worker and a command
such as `durakit resume` apart.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
from procrastinate import App, PsycopgConnector
from procrastinate.jobs import DeleteJobCondition, Job
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from procrastinate.worker import Worker as ProcrastinateWorker

from durakit import db, jobs, metrics, registry, timers
from durakit.checkpointers import CONNECT_TIMEOUT_SECONDS, RECONNECT_TIMEOUT_SECONDS
from durakit.errors import DatabaseUnavailable, InvalidInput, NotFound, ThreadBusy
from durakit.retries import AUTO_RETRY
from durakit.runner import Runner
from durakit.views import ThreadView

logger = logging.getLogger("durakit.worker")

# While the database is away the worker looks for it again after 0.5 s, 1 s, 2 s, ... and
# then every OUTAGE_RETRY_CAP_SECONDS, for as long as it takes.
OUTAGE_FIRST_RETRY_SECONDS = 0.5
OUTAGE_RETRY_CAP_SECONDS = 5.0


def is_database_loss(exc: BaseException) -> bool:
    """True if `exc`, or what it wraps (procrastinate's ConnectorException wraps psycopg's
    errors), says the database could not be reached or the connection broke."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable)):
            return True  # PoolTimeout is an OperationalError
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class DatabaseWatch:
    """Says once that the database is away and once that it is back, whoever notices first
    (the sweeper, in a thread, or the loop that keeps procrastinate's worker running)."""

    def __init__(self, where: str, say: Callable[[str], None]) -> None:
        self.where = where
        self.say = say
        self.away_since: float | None = None
        self._mutex = threading.Lock()

    def lost(self, exc: BaseException) -> None:
        with self._mutex:
            if self.away_since is not None:
                return
            self.away_since = time.monotonic()
        self.say(f"Lost the database at {self.where} ({db.one_line(exc)}); this worker waits for it, trying again "
                 f"every {OUTAGE_RETRY_CAP_SECONDS:g} s at most, and its runs go on from their checkpoints once it "
                 "is back.")

    def back(self) -> None:
        with self._mutex:
            if self.away_since is None:
                return
            seconds, self.away_since = time.monotonic() - self.away_since, None
        self.say(f"The database is back after {seconds:.0f} s; taking jobs again.")


class QuietOutage(logging.Filter):
    """Drops procrastinate's and asyncio's reports of a lost connection (a traceback each
    time a side task, a fetch or a job's acknowledgement fails): `DatabaseWatch` says it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and is_database_loss(exc))


def quieted_loggers() -> list[logging.Logger]:
    """procrastinate's loggers (a filter applies to the records of its own logger only, not
    of its children) and asyncio's, which reports the job acknowledgements that failed."""
    names = [name for name in logging.root.manager.loggerDict if name.split(".")[0] == "procrastinate"]
    return [logging.getLogger(name) for name in {*names, "procrastinate.worker.durakit", "asyncio"}]


class Backoff(BaseRetryStrategy):
    """A job that could not be done is tried again later, not given up: its timer must still
    fire, its answer still be carried out. A thread held by another process (a `durakit
    resume`, a frozen worker) is tried again within a second or two; anything else (the
    database away, a missing key) after 5 s, 10 s, ... up to 5 minutes. A job for a thread
    that does not exist is dropped.

    While a job waits for its retry its thread counts as queued, so the sweep does not queue
    it again."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, (NotFound, InvalidInput)):
            return None
        if isinstance(exception, ThreadBusy):
            return RetryDecision(retry_in={"seconds": min(1 + job.attempts, 10)})
        return RetryDecision(retry_in={"seconds": min(5 * (job.attempts + 1), 300)})


BACKOFF = Backoff()


@dataclass(frozen=True)
class JobOutcome:
    """One job done, for the progress line."""

    job: str  # "advance" or "fire_timer"
    thread_id: str
    what: str  # the run's kind, or the timer's name
    view: ThreadView | None  # None: nothing to do
    seconds: float
    error: str | None = None


class Worker:
    def __init__(
        self,
        runner: Runner,
        *,
        concurrency: int = 4,
        poll_interval: float = 1.0,
        heartbeat: float = 1.0,
        stalled_after: float = registry.STALLED_AFTER_SECONDS,
        sweep_interval: float = 1.0,
        metrics_port: int | None = None,
        burst: bool = False,
        on_job: Callable[[JobOutcome], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
    ) -> None:
        self.runner = runner
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.heartbeat = heartbeat
        self.stalled_after = stalled_after
        self.sweep_interval = sweep_interval
        self.metrics_port = metrics_port
        self.burst = burst  # work off what is ready now, then return
        self.on_job = on_job or (lambda outcome: None)
        self.watch = DatabaseWatch(runner.database.display, on_notice or logger.warning)
        self.app = self._make_app()
        self._procrastinate: ProcrastinateWorker | None = None
        self._stopping = False
        self._wake: asyncio.Event | None = None  # set by `stop`: ends a wait for the database

    def _make_app(self) -> App:
        """procrastinate's app, on a pool of its own for LISTEN, fetching and finishing jobs,
        and heartbeats (each brief). A new one for each session: procrastinate's connector
        keeps a pool that failed to open and would hand it back on the next open.

        Its pool keeps psycopg-pool's check before each loan: with psycopg's default
        prepare_threshold (5) the empty statement is never prepared (psycopg drops its
        count after each run), so it leaves nothing behind, unlike durakit's own pools."""
        connector = PsycopgConnector(
            conninfo=self.runner.database.url, min_size=1, max_size=3,
            timeout=CONNECT_TIMEOUT_SECONDS * 2,  # a loan waits this long before the worker calls the database lost
            reconnect_timeout=RECONNECT_TIMEOUT_SECONDS,
        )
        app = App(connector=connector)
        app.task(name=jobs.ADVANCE, queue=jobs.QUEUE, retry=BACKOFF)(self._advance)
        app.task(name=jobs.FIRE_TIMER, queue=jobs.QUEUE, retry=BACKOFF)(self._fire_timer)
        return app

    def run(self) -> None:
        """Work until SIGTERM or SIGINT (or `stop`); with `burst`, until no job is ready."""
        asyncio.run(self.run_async())

    async def run_async(self) -> None:
        loop = asyncio.get_running_loop()
        # Sync jobs run in the loop's default executor: one thread per concurrent job.
        loop.set_default_executor(ThreadPoolExecutor(self.concurrency, thread_name_prefix="durakit-job"))
        if self.metrics_port is not None:
            try:
                metrics.serve(self.metrics_port, self.runner.pool)
            except OSError as exc:
                raise InvalidInput(f"Cannot serve metrics on port {self.metrics_port} ({exc.strerror}).") from None
        await asyncio.to_thread(self.runner.warm_up)
        self._wake = asyncio.Event()
        quiet, quieted = QuietOutage(), quieted_loggers()
        for each in quieted:
            each.addFilter(quiet)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        side_tasks: list[asyncio.Task[None]] = []
        try:
            if self.burst:
                await asyncio.to_thread(self.sweep)  # once: what is ready now includes dead runs
            side_tasks = [asyncio.create_task(self._sweep_forever(), name="durakit sweeper"),
                          asyncio.create_task(self._beat_forever(), name="durakit heartbeat")]
            await self._work_through_outages()
        finally:
            for task in side_tasks:
                task.cancel()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            for each in quieted:
                each.removeFilter(quiet)

    async def _work_through_outages(self) -> None:
        """Keep procrastinate's worker running until told to stop. It gives up when the
        database stays away longer than a loan may wait (a heartbeat, a fetch, the LISTEN
        session fails), after waiting for the jobs it runs: then wait for the database and
        start a new one. The jobs the old one had taken are handed back by the sweep (its
        heartbeat stopped), and their threads go on from their checkpoints, the ledger
        keeping each side effect to one."""
        while True:
            try:
                await self._work()
                lost: BaseException | None = None
            except Exception as exc:
                if not is_database_loss(exc):
                    raise
                lost = exc
            if self._stopping:
                return
            if self.burst:
                if lost is None:
                    return
                raise DatabaseUnavailable(f"Lost the database at {self.runner.database.display} "
                                          f"({db.one_line(lost)}); run the worker again once it is back.") from lost
            await self._wait_for_database(lost)
            if self._stopping:
                return

    async def _work(self) -> None:
        """One procrastinate worker, on a new app, until it stops."""
        self.app = self._make_app()
        async with self.app.open_async():
            self._procrastinate = ProcrastinateWorker(
                self.app,
                queues=[jobs.QUEUE],
                name="durakit",
                concurrency=self.concurrency,
                fetch_job_polling_interval=self.poll_interval,
                update_heartbeat_interval=self.heartbeat,
                stalled_worker_timeout=self.stalled_after,
                delete_jobs=DeleteJobCondition.SUCCESSFUL,
                install_signal_handlers=False,
                wait=not self.burst,
            )
            if self._stopping:
                return
            self.watch.back()
            try:
                await self._procrastinate.run()
            finally:
                self._procrastinate = None

    async def _wait_for_database(self, lost: BaseException | None) -> None:
        """Return once the database answers (or `stop` was called), trying with capped backoff."""
        delay = OUTAGE_FIRST_RETRY_SECONDS
        while not self._stopping:
            try:
                await asyncio.to_thread(lambda: db.connect(self.runner.database.url).close())
                return
            except DatabaseUnavailable as exc:
                self.watch.lost(lost or exc)
            assert self._wake is not None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, OUTAGE_RETRY_CAP_SECONDS)

    def stop(self) -> None:
        """Take no more jobs; stop each run at its next step boundary and queue the rest."""
        self._stopping = True
        self.runner.drain("worker stopping")
        if self._procrastinate is not None:
            self._procrastinate.stop()
        if self._wake is not None:
            self._wake.set()

    # The jobs (each in a thread of the executor)

    def _advance(self, thread_id: str, kind: str) -> None:
        self._do("advance", thread_id, kind, lambda: self.runner.work(thread_id, kind))

    def _fire_timer(self, thread_id: str, timer: str) -> None:
        self._do("fire_timer", thread_id, timer, lambda: self.runner.fire_timer(thread_id, timer))

    def _do(self, job: str, thread_id: str, what: str, work: Callable[[], ThreadView | None]) -> None:
        started = time.perf_counter()
        try:
            view = work()
        except ThreadBusy:
            raise  # procrastinate tries again shortly (Backoff)
        except Exception as exc:
            self.on_job(JobOutcome(job, thread_id, what, None, time.perf_counter() - started, error=str(exc)))
            raise
        self.on_job(JobOutcome(job, thread_id, what, view, time.perf_counter() - started))

    # Finding work nobody queued

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await asyncio.to_thread(self.sweep)
            except Exception as exc:  # a lost database must not kill the worker; the next sweep tries again
                if not is_database_loss(exc):
                    logger.exception("sweep failed")
                elif not self._stopping:
                    self.watch.lost(exc)
                continue
            if self._procrastinate is not None:
                self.watch.back()  # the database answers and procrastinate's worker runs

    async def _beat_forever(self) -> None:
        """Beat for procrastinate's worker as long as it is registered. It stops its own
        heartbeat as soon as it stops taking jobs (a burst worker whose queue ran dry, a
        worker told to stop) and then waits for the jobs it runs: without this, those
        would be handed back, by this worker's own sweep too, while they still run. On the
        event loop, not in the job threads, so a worker whose threads are all busy still beats."""
        while True:
            await asyncio.sleep(self.heartbeat)
            worker = self._procrastinate
            if worker is None or worker.worker_id is None:
                continue
            try:
                await self.app.job_manager.update_heartbeat(worker.worker_id)
            except Exception as exc:  # the sweep says when the database is away
                if not is_database_loss(exc):
                    logger.exception("heartbeat failed")

    def sweep(self) -> tuple[int, int]:
        """Hand back the jobs of silent workers, queue a run of each thread whose process
        died, and a job for each scheduled timer without one; returns how many jobs were
        handed back and how many threads queued."""
        with self.runner.pool.connection() as conn:
            handed_back = jobs.hand_back_stalled(conn, self.stalled_after)
            orphans = registry.orphans(conn, limit=500)
            queued = sum(1 for thread_id in orphans if jobs.defer_advance(conn, thread_id, "recovered") is not None)
            for lost in registry.unqueued_retries(conn):  # a planned automatic retry is never lost
                jobs.defer_retry(conn, lost["thread_id"], AUTO_RETRY, lost["retry_at"])
            with conn.transaction():
                timers.arm_all(conn)
        for job in handed_back:
            logger.info("handed back job %s of thread %s (its worker stopped beating)", job["id"], job["lock"])
        return len(handed_back), queued


def describe(outcome: JobOutcome) -> str:
    """The progress line the CLI prints for each job."""
    took = f"{outcome.seconds * 1000:.0f} ms"
    if outcome.error is not None:
        return f"{outcome.job} {outcome.thread_id} ({outcome.what}): error after {took}: {outcome.error}"
    if outcome.view is None:
        return f"{outcome.job} {outcome.thread_id} ({outcome.what}): nothing to do ({took})"
    view = outcome.view
    where = str(view.status)
    question = view.question
    if question is not None and question.for_person:
        where += f" for a decision at {question.node}"
    elif question is not None:
        where += f" until {question.wakes_at} ({question.timer})"
    elif view.retry_at:
        where += f" (next retry at {view.retry_at})"
    return f"{outcome.job} {view.thread_id} [{view.template}] ({outcome.what}): {where} in {took}"
