"""Prometheus metrics of a worker (`durakit worker --metrics-port PORT`).

Counted in the worker process, since it started:
- `durakit_runs_started_total{template}`, `durakit_runs_completed_total{template}`,
  `durakit_runs_failed_total{template}`: runs of threads (a start, a resume, a wake-up),
  and those that ended the thread completed or failed (the others left it waiting);
- `durakit_step_retries_total{node}`: attempts of a node that failed with a transient error
  and were tried again;
- `durakit_step_seconds{node}`: how long each attempt of a node took (a histogram).

Read from the database at each scrape, the same for every worker:
- `durakit_queue_jobs{state}`: jobs ready to run, scheduled for later (timers), running;
- `durakit_oldest_waiting_approval_seconds` and `durakit_waiting_approvals`.

The runner reports through `run_started` and `run_ended`, nodes through `step_finished`
and `step_retried` (called by `durakit.steps.step`); they do nothing until `serve` has
started the metrics, so a plain `durakit run` pays nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from psycopg_pool import ConnectionPool

from durakit.record import Status

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

_runs: dict[str, Counter] = {}  # started, completed, failed
_retries: Counter | None = None
_step_seconds: Histogram | None = None


def serve(port: int, pool: ConnectionPool, *, addr: str = "0.0.0.0") -> Any:
    """Start the metrics and an HTTP server for them on `port`; returns the server."""
    global _retries, _step_seconds
    from prometheus_client import REGISTRY, Counter, Histogram, start_http_server

    if not _runs:
        for event, text in (("started", "Runs of threads started"), ("completed", "Runs that completed their thread"),
                            ("failed", "Runs that left their thread failed")):
            _runs[event] = Counter(f"durakit_runs_{event}", f"{text} by this worker", ["template"])
        _retries = Counter("durakit_step_retries", "Node attempts retried after a transient error", ["node"])
        _step_seconds = Histogram(
            "durakit_step_seconds", "Duration of each node attempt", ["node"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        REGISTRY.register(DatabaseCollector(pool))
    server, _thread = start_http_server(port, addr=addr)
    return server


def run_started(template: str) -> None:
    if _runs:
        _runs["started"].labels(template).inc()


def run_ended(template: str, status: str) -> None:
    if status in (Status.COMPLETED, Status.FAILED) and _runs:
        _runs[status].labels(template).inc()


def step_finished(node: str, seconds: float) -> None:
    if _step_seconds is not None:
        _step_seconds.labels(node).observe(seconds)


def step_retried(node: str) -> None:
    if _retries is not None:
        _retries.labels(node).inc()


class DatabaseCollector:
    """Queue depth and the oldest waiting approval, read when Prometheus scrapes."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from durakit import stats

        queue = stats.queue_depth(self.pool)
        jobs = GaugeMetricFamily("durakit_queue_jobs", "Jobs in durakit's queue, by state", labels=["state"])
        for state in ("ready", "scheduled", "running"):
            jobs.add_metric([state], queue[state])
        yield jobs
        waiting = stats.waiting_approvals(self.pool)
        yield GaugeMetricFamily("durakit_waiting_approvals", "Threads waiting for a person's answer",
                                value=waiting["waiting"])
        yield GaugeMetricFamily("durakit_oldest_waiting_approval_seconds",
                                "How long the oldest unanswered question has waited", value=waiting["seconds"] or 0)
