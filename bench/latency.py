"""Latency of `durakit worker`: (a) how soon a thread whose worker was SIGKILLed mid-run
runs again on another worker, counted from the moment the dead worker's heartbeat
expires; (b) how soon a queued answer (`Runner.approve` on a submitted thread) runs on
an idle worker; (c) how long a fresh worker's first job takes to start.

    python -m bench.latency                    # 10 kills, 50 approvals, 3 fresh workers
    python -m bench.latency --kills 5 --approvals 20
    python -m bench.latency --part kill        # or approve, or first-job

Both run on a scratch database of DURAKIT_DATABASE_URL's server (or the embedded
PostgreSQL), dropped afterwards, and read every time off the database's clock
(clock_timestamp(), durakit_events.at, procrastinate_workers.last_heartbeat).

(a) Two workers run with DURAKIT_SANDBOX_LATENCY_MS=200 and `--stalled-after 2`; a
booking thread is submitted and, a moment after its first node finishes, the worker
running it (its lease owner) is SIGKILLed. Its heartbeat expires at its last beat plus
stalled-after; the other worker's sweep hands the job back and a worker runs it, which
writes the run's first event. A replacement worker is started before the next round.

(b) One idle worker with `--poll-interval 1`, so that polling cannot explain a quick
start: the wake-up has to come from LISTEN/NOTIFY. Refund threads wait for approval; each
is approved in turn (the worker idle in between) and timed from the database clock just
before `approve` to the run's `resumed` event and to the first node finished after it.

(c) One fresh worker at a time, started and idle: a refund is submitted and timed to its
run's first event, then a second one. The workers of (a) are warmed up this way before
each kill, so that (a) times the hand-back, not the first job's imports.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from bench.steps import scratch_database
from bench.workers import (
    WorkerProcesses,
    exit_on_sigterm,
    open_runner,
    wait_for_workers,
    worker_command,
    worker_env,
    worker_processes,
)
from durakit.runner import Runner
from tests.scenarios import booking_setup, refund_setup

T = TypeVar("T")

FIRST_NODE_SQL = "SELECT 1 FROM durakit_events WHERE thread_id = %s AND kind = 'node_finished' LIMIT 1"
LEASE_SQL = "SELECT status, lease_owner FROM durakit_threads WHERE thread_id = %s"
# The job the killed worker was running, and that worker's last heartbeat.
HEARTBEAT_SQL = """
SELECT clock_timestamp() AS killed_at, w.last_heartbeat
FROM procrastinate_jobs j JOIN procrastinate_workers w ON w.id = j.worker_id
WHERE j.lock = %s AND j.status = 'doing'
"""
NEXT_EVENT_SQL = "SELECT kind, at FROM durakit_events WHERE thread_id = %s AND at > %s ORDER BY id LIMIT 1"
STATUS_SQL = "SELECT status, waiting_for FROM durakit_threads WHERE thread_id = %s"
AFTER_APPROVE_SQL = """
SELECT kind, node, at FROM durakit_events WHERE thread_id = %s AND at >= %s
  AND kind IN ('decided', 'resumed', 'node_finished') ORDER BY id
"""


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.01) -> T:
    """Call `probe` until it returns something; give up after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise SystemExit(f"Gave up waiting for {what} after {timeout:.0f} s.")
        time.sleep(interval)


def fetch(runner: Runner, sql: str, *params: Any) -> dict[str, Any] | None:
    with runner.pool.connection() as conn:
        return conn.execute(sql, params).fetchone()


def ms(delta: timedelta) -> float:
    return delta.total_seconds() * 1000


def stats(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"median {statistics.median(ordered):.0f} ms, p90 {p90:.0f} ms, max {ordered[-1]:.0f} ms"


# (a) pick-up after a worker's death


@dataclass
class Pickup:
    after_expiry: float  # ms from the dead worker's heartbeat expiry to the run's first event
    after_kill: float  # ms from the kill to the run's first event
    kind: str  # the event that started the run again


def kill_one_run(runner: Runner, procs: WorkerProcesses, rng: random.Random, stalled_after: float) -> Pickup | None:
    """Submit a booking, SIGKILL its worker mid-run, time the pick-up; None if the run
    ended before the kill could land."""
    request, _ = booking_setup()(runner)
    thread_id = runner.submit("booking", request).thread_id
    wait_for(lambda: fetch(runner, FIRST_NODE_SQL, thread_id), 30, "the booking's first node")
    time.sleep(rng.uniform(0.0, 0.3))
    row = fetch(runner, LEASE_SQL, thread_id)
    owner_name = (row or {}).get("lease_owner") or ""
    owner = next((proc for proc in procs.procs if owner_name.endswith(f":{proc.pid}")), None)
    if row is None or row["status"] != "running" or owner is None:
        return None
    procs.kill(owner)
    beat = fetch(runner, HEARTBEAT_SQL, thread_id)
    if beat is None:
        return None  # the job finished just before the kill
    event = wait_for(lambda: fetch(runner, NEXT_EVENT_SQL, thread_id, beat["killed_at"]), 60, "the run to start again")
    expiry = beat["last_heartbeat"] + timedelta(seconds=stalled_after)
    wait_for(lambda: settled(runner, thread_id), 60, "the booking to settle")
    return Pickup(ms(event["at"] - expiry), ms(event["at"] - beat["killed_at"]), event["kind"])


def settled(runner: Runner, thread_id: str) -> bool | None:
    row = fetch(runner, STATUS_SQL, thread_id)
    return True if row and row["status"] != "running" else None


def warm_up(runner: Runner, procs: WorkerProcesses) -> None:
    """Run bookings until every worker has done a job: a worker's first job loads LangGraph
    and compiles the templates, which (c) measures on its own."""
    for _ in range(10):
        if all(procs.job_lines(proc) for proc in procs.procs):
            return
        thread_ids = [runner.submit("booking", booking_setup()(runner)[0]).thread_id for _ in range(8)]
        for thread_id in thread_ids:
            wait_for(lambda thread_id=thread_id: settled(runner, thread_id), 60, "the warm-up bookings")
    raise SystemExit("A worker took no job in 10 rounds of warm-up bookings.")


def measure_pickups(url: str, kills: int, stalled_after: float, latency_ms: int, seed: int) -> list[Pickup]:
    rng = random.Random(seed)
    command = worker_command(stalled_after=stalled_after)
    pickups: list[Pickup] = []
    with open_runner(url) as runner, worker_processes(worker_env(url, latency_ms), command) as procs:
        for _ in range(2):
            procs.start()
        wait_for_workers(runner, 2)
        attempts = 0
        while len(pickups) < kills and attempts < 3 * kills:
            attempts += 1
            warm_up(runner, procs)
            pickup = kill_one_run(runner, procs, rng, stalled_after)
            if pickup is not None:
                pickups.append(pickup)
                print(f"  kill {len(pickups)}: run again {pickup.after_expiry:.0f} ms after the heartbeat expired "
                      f"({pickup.after_kill:.0f} ms after the kill), event {pickup.kind!r}", flush=True)
            while len(procs.procs) < 2:
                procs.start()
            wait_for_workers(runner, 2)  # the dead worker stopped beating long ago: the new one beats
    return pickups


# (b) approval to the next node


@dataclass
class Approval:
    to_run: float  # ms from just before approve() to the `resumed` event
    queued_to_run: float  # ms from the `decided` event (the answer and its job committed) to `resumed`
    to_node: float  # ms from just before approve() to the first node finished after it
    approve_call: float  # ms that approve() itself took in this process


def approve_one(runner: Runner, thread_id: str) -> Approval:
    with runner.pool.connection() as conn:
        t0 = conn.execute("SELECT clock_timestamp() AS t0").fetchone()["t0"]
    began = time.perf_counter()
    runner.approve(thread_id, "approve", by="bench")
    call = (time.perf_counter() - began) * 1000
    wait_for(lambda: settled(runner, thread_id), 60, "the refund to finish")
    with runner.pool.connection() as conn:
        events = conn.execute(AFTER_APPROVE_SQL, (thread_id, t0)).fetchall()
    decided = next(e["at"] for e in events if e["kind"] == "decided")
    resumed = next(e["at"] for e in events if e["kind"] == "resumed")
    node = next(e["at"] for e in events if e["kind"] == "node_finished" and e["at"] >= resumed)
    return Approval(ms(resumed - t0), ms(resumed - decided), ms(node - t0), call)


def measure_approvals(url: str, count: int, poll_interval: float, seed: int) -> list[Approval]:
    rng = random.Random(seed)
    approvals = []
    with open_runner(url) as runner, worker_processes(worker_env(url), worker_command(poll_interval=poll_interval)) as procs:
        procs.start()
        wait_for_workers(runner, 1)
        thread_ids = [runner.submit("refund", refund_setup(runner)[0]).thread_id for _ in range(count)]
        wait_for(lambda: True if runner.pending().total >= count else None, 120, "the refunds to ask", interval=0.2)
        for thread_id in thread_ids:
            time.sleep(rng.uniform(0.2, 0.6))  # the worker idles, waiting on LISTEN (or its next poll)
            approvals.append(approve_one(runner, thread_id))
    return approvals


# (c) a worker's first job


FIRST_EVENT_SQL = "SELECT at FROM durakit_events WHERE thread_id = %s ORDER BY id LIMIT 1"


def submit_to_start(runner: Runner) -> float:
    """ms from just before a refund's submit to its run's first event."""
    request = refund_setup(runner)[0]
    with runner.pool.connection() as conn:
        t0 = conn.execute("SELECT clock_timestamp() AS t0").fetchone()["t0"]
    thread_id = runner.submit("refund", request).thread_id
    started = wait_for(lambda: fetch(runner, FIRST_EVENT_SQL, thread_id), 60, "the run to start")["at"]
    wait_for(lambda: settled(runner, thread_id), 60, "the refund to ask")
    return ms(started - t0)


def measure_first_jobs(url: str, workers: int) -> tuple[list[float], list[float]]:
    """For `workers` fresh workers, one after the other: submit -> run start of the first
    job each takes, and of the job after it."""
    first, second = [], []
    with open_runner(url) as runner:
        for _ in range(workers):
            with worker_processes(worker_env(url)) as procs:
                procs.start()
                wait_for_workers(runner, 1)
                time.sleep(1.0)  # started and idle: what a replacement looks like when work arrives
                first.append(submit_to_start(runner))
                second.append(submit_to_start(runner))
            time.sleep(1.5)  # its heartbeat row goes stale, so the next worker is waited for properly
    return first, second


# Output


def report_pickups(pickups: list[Pickup], stalled_after: float) -> None:
    after_expiry = [p.after_expiry for p in pickups]
    after_kill = [p.after_kill for p in pickups]
    target = max(after_expiry) <= 5000
    print(f"(a) pick-up after a SIGKILL, {len(pickups)} kills, --stalled-after {stalled_after:g} (heartbeat every 1 s):")
    print(f"    heartbeat expiry -> run again: {stats(after_expiry)}  (target: within 5 s: "
          f"{'met' if target else 'MISSED'})")
    print(f"    kill -> run again:             {stats(after_kill)}")
    print("    for contrast (the issue's figures, not measured here): LangGraph's server sweeps every 2 minutes on a "
          "120 s heartbeat, so a dead run waits minutes")


def report_approvals(approvals: list[Approval], poll_interval: float) -> None:
    to_run = [a.to_run for a in approvals]
    target = statistics.median(to_run) <= 50
    print(f"(b) approval -> next node on an idle worker, {len(approvals)} approvals, --poll-interval {poll_interval:g}:")
    print(f"    approve() call itself:          {stats([a.approve_call for a in approvals])}")
    print(f"    approve -> run starts:          {stats(to_run)}  (target: median <= 50 ms: "
          f"{'met' if target else 'MISSED'})")
    print(f"    answer committed -> run starts: {stats([a.queued_to_run for a in approvals])}")
    print(f"    approve -> next node finished:  {stats([a.to_node for a in approvals])}")
    print(f"    for contrast, waking by polling alone would add {poll_interval * 500:.0f} ms on average "
          f"(up to {poll_interval * 1000:.0f} ms) at --poll-interval {poll_interval:g}")


def report_first_jobs(first: list[float], second: list[float]) -> None:
    print(f"(c) a fresh worker's first job, {len(first)} workers: submit -> run starts")
    print(f"    first job:  {stats(first)}")
    print(f"    second job: {stats(second)}")
    print("    (the first job loads LangGraph, the saver and the template's graph: lazily, in the job)")


def main(argv: list[str] | None = None) -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "kill", "approve", "first-job"), default="all")
    parser.add_argument("--kills", type=int, default=10, help="workers killed mid-run in (a)")
    parser.add_argument("--stalled-after", type=float, default=2.0, help="the workers' --stalled-after in (a)")
    parser.add_argument("--latency-ms", type=int, default=200, help="DURAKIT_SANDBOX_LATENCY_MS of (a)'s workers")
    parser.add_argument("--approvals", type=int, default=50, help="approvals timed in (b)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="the worker's --poll-interval in (b)")
    parser.add_argument("--fresh-workers", type=int, default=3, help="fresh workers timed in (c)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    started = datetime.now()
    with scratch_database() as (url, display):
        print(f"worker latency on a scratch database of {display}", flush=True)
        if args.part in ("all", "kill"):
            pickups = measure_pickups(url, args.kills, args.stalled_after, args.latency_ms, args.seed)
            report_pickups(pickups, args.stalled_after)
        if args.part in ("all", "approve"):
            approvals = measure_approvals(url, args.approvals, args.poll_interval, args.seed)
            report_approvals(approvals, args.poll_interval)
        if args.part in ("all", "first-job"):
            report_first_jobs(*measure_first_jobs(url, args.fresh_workers))
    print(f"({(datetime.now() - started).total_seconds():.0f} s)")


if __name__ == "__main__":
    main()
