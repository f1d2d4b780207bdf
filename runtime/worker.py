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
  of workers silent for `stalled_after` seconds (killed, frozen, cut off) and queues a
  run for every `running` thread nobody holds and no job will run (its process died);
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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from procrastinate import App, PsycopgConnector
from procrastinate.jobs import DeleteJobCondition, Job
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from procrastinate.worker import Worker as ProcrastinateWorker

from durakit import jobs, metrics, registry, timers
from durakit.errors import InvalidInput, NotFound, ThreadBusy
from durakit.runner import Runner, ThreadView

logger = logging.getLogger("durakit.worker")

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
        # procrastinate's own pool: LISTEN, fetching and finishing jobs, heartbeats (each brief).
        self.app = App(connector=PsycopgConnector(conninfo=runner.database.url, min_size=1, max_size=3))
        self.app.task(name=jobs.ADVANCE, queue=jobs.QUEUE, retry=BACKOFF)(self._advance)
        self.app.task(name=jobs.FIRE_TIMER, queue=jobs.QUEUE, retry=BACKOFF)(self._fire_timer)
        self._procrastinate: ProcrastinateWorker | None = None

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
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
            if self.burst:
                await asyncio.to_thread(self.sweep)  # once: what is ready now includes dead runs
            sweeper = asyncio.create_task(self._sweep_forever(), name="durakit sweeper")
            try:
                await self._procrastinate.run()
            finally:
                sweeper.cancel()
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)

    def stop(self) -> None:
        """Take no more jobs; stop each run at its next step boundary and queue the rest."""
        self.runner.drain("worker stopping")
        if self._procrastinate is not None:
            self._procrastinate.stop()

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
            except Exception:  # a lost database must not kill the worker; the next sweep tries again
                logger.exception("sweep failed")

    def sweep(self) -> tuple[int, int]:
        """Hand back the jobs of silent workers, queue a run of each thread whose process
        died, and a job for each scheduled timer without one; returns how many jobs were
        handed back and how many threads queued."""
        with self.runner.pool.connection() as conn:
            handed_back = jobs.hand_back_stalled(conn, self.stalled_after)
            orphans = registry.orphans(conn, limit=500)
            queued = sum(1 for thread_id in orphans if jobs.defer_advance(conn, thread_id, "recovered") is not None)
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
    where = view.status
    if view.status == "waiting" and view.interrupt:
        if view.interrupt.get("decisions"):
            where += f" for a decision at {view.interrupt.get('node')}"
        else:
            where += f" until {view.interrupt.get('wakes_at')} ({view.interrupt.get('timer')})"
    return f"{outcome.job} {view.thread_id} [{view.template}] ({outcome.what}): {where} in {took}"
