"""Crash soak: many threads of all four templates, driven through the `durakit` CLI as
real child processes, SIGKILLed at random moments, recovered and answered until every
thread is done; then every thread and every side effect is checked.

    python -m bench.chaos                      # 250 threads, over 300 kills
    python -m bench.chaos --threads 20 --seed 7
    python -m bench.chaos --terminate-every 3  # also cut every durakit database session
    python -m bench.chaos --restart-every 10   # also restart the embedded PostgreSQL
    python -m bench.chaos --freeze-every 2     # also freeze a child and cut only its lock session
    python -m bench.chaos --outage-seconds 60  # instead: running workers lose the database for 60 s

It uses the database durakit is configured for (DURAKIT_DATABASE_URL or the embedded
one) and touches only the threads, orders and accounts it creates.

A kill lands at a random moment: most are timed from when the child starts advancing
its thread (its first event), a few from its start, so process start-up, lock taking,
model-free judgement, checkpoint writes and sandbox calls (slowed by
DURAKIT_SANDBOX_LATENCY_MS) are all hit. Interrupted threads are resumed by
`durakit recover` (itself killed now and then); waiting threads are answered with
`durakit approve` as their questions appear. A thread that sleeps on a timer (a
reminder, a follow-up), or whose question the scenario lets pass its deadline, has the
timer moved to now and a `durakit worker --burst` fires it (killed now and then too).

With --outage-seconds, the soak is of long-running workers instead: threads are submitted
to the queue (on a scratch database), `--workers` `durakit worker` processes run them
through a proxy (tests/dbproxy.py), and once a fifth of the threads are done the proxy
cuts every worker connection and refuses new ones for that long; this process answers
questions and moves timers throughout, on a direct connection. Every worker must live
through it, saying once that it lost the database and once that it is back, and every
thread must end as an undisturbed run of its scenario does (bench/workers.py's check).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from durakit import db, timers
from durakit.runner import Runner
from durakit.settings import KitSettings
from tests.scenarios import LET_IT_PASS, SCENARIOS, Scenario, next_move, thread_id_for

KILLED = -signal.SIGKILL


@dataclass
class Tracked:
    """One soak thread: its scenario, its request and the ids its effects are counted by."""

    scenario: Scenario
    request: dict[str, Any]
    ids: dict[str, str]
    thread_id: str


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    output: Any  # temporary files for stdout and stderr: a pipe nobody reads could fill and block
    errors: Any
    action: str  # run, approve, resume, recover or worker
    thread_id: str | None
    started: float
    last_event: int  # the thread's newest event id when the child started
    kill_delay: float | None = None  # seconds, from `kill_from`
    kill_from: str = "activity"  # "activity": the child's first event; "start": its start
    active_since: float | None = None
    killed: bool = False
    frozen_until: float | None = None  # SIGSTOPped, its lock session cut: woken (SIGCONT) then
    frozen_at_event: int = 0  # the thread's newest event id when it was frozen


@dataclass
class SoakReport:
    threads: int = 0
    completed: int = 0
    children: int = 0
    kills: int = 0
    kills_mid_run: int = 0  # the child had begun advancing its thread when it died
    kills_by_action: Counter[str] = field(default_factory=Counter)
    recovered: int = 0  # times `durakit recover` resumed a soak thread (from the event log)
    reconnected: int = 0  # times a run lost the database and continued after it came back
    resumed_failed: int = 0  # failed threads continued with `durakit resume`
    busy: int = 0  # exit 4: another process had the thread at that moment
    database_away: int = 0  # exit 5: the database was down when it started, or stayed away too long
    sessions_terminated: int = 0
    database_restarts: int = 0
    freezes: int = 0  # children frozen with their lock session cut
    taken_over: int = 0  # ... whose thread another process advanced before they woke
    forked_chains: int = 0  # threads with two checkpoints of one parent: a stale step saved late
    duplicates: int = 0
    missing_effects: int = 0
    lost: int = 0  # not completed, or not with the expected outcome
    inconsistent_events: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.missing_effects or self.lost or self.inconsistent_events
                    or self.unexpected_exits or self.forked_chains)

    def lines(self) -> list[str]:
        return [
            f"threads {self.threads} ({self.completed} completed) in {self.seconds:.0f} s, {self.children} child processes",
            f"kills {self.kills} ({self.kills_mid_run} mid-run; "
            + ", ".join(f"{action} {n}" for action, n in sorted(self.kills_by_action.items()))
            + f"), threads recovered {self.recovered}, "
            f"failed threads resumed {self.resumed_failed}, busy refusals {self.busy}",
            f"database sessions terminated {self.sessions_terminated}, database restarts {self.database_restarts}, "
            f"runs that reconnected {self.reconnected}, commands that found the database away (exit 5) "
            f"{self.database_away}",
            f"children frozen with their lock session cut {self.freezes}, "
            f"their threads taken over meanwhile {self.taken_over}",
            f"duplicates {self.duplicates}, missing effects {self.missing_effects}, lost {self.lost}, "
            f"inconsistent event logs {self.inconsistent_events}, forked checkpoint chains {self.forked_chains}, "
            f"unexpected exits {len(self.unexpected_exits)}",
        ]


STATE_SQL = """
SELECT t.thread_id, t.status, t.interrupt, l.lease_held,
       (SELECT count(*) FROM durakit_decisions d WHERE d.thread_id = t.thread_id) AS answered,
       (SELECT coalesce(max(e.id), 0) FROM durakit_events e WHERE e.thread_id = t.thread_id) AS last_event
FROM durakit_threads t, LATERAL (SELECT {lease_held} AS lease_held) l
WHERE t.thread_id = ANY(%s)
"""

# Ends only the session holding the thread's advisory lock (what an idle timeout in a proxy does).
CUT_LOCK_SQL = """
SELECT count(pg_terminate_backend(l.pid)) AS n FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = ((hashtextextended('durakit.thread:' || %(thread_id)s, 0) >> 32) & 4294967295)
  AND l.objid::bigint = (hashtextextended('durakit.thread:' || %(thread_id)s, 0) & 4294967295)
"""

FORKED_CHAINS_SQL = """
SELECT count(DISTINCT thread_id) AS n FROM (
    SELECT thread_id FROM checkpoints
    WHERE thread_id = ANY(%s) AND checkpoint_ns = '' AND parent_checkpoint_id IS NOT NULL
    GROUP BY thread_id, parent_checkpoint_id HAVING count(*) > 1
) forked
"""

TERMINATE_SQL = """
SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'durakit%' AND pid <> pg_backend_pid()
"""


class Soak:
    def __init__(
        self,
        *,
        threads: int,
        kill_rate: float,
        parallel: int,
        latency_ms: int,
        seed: int,
        timeout: float,
        terminate_every: float | None = None,
        restart_every: float | None = None,
        freeze_every: float | None = None,
        freeze_for: float = 4.0,
        say=print,
    ) -> None:
        self.rng = random.Random(seed)
        self.kill_rate = kill_rate
        self.parallel = parallel
        self.timeout = timeout
        self.terminate_every = terminate_every
        self.restart_every = restart_every
        self.freeze_every = freeze_every
        self.freeze_for = freeze_for
        self.say = say
        self.env = {**os.environ, "DURAKIT_SANDBOX_LATENCY_MS": str(latency_ms)}
        self.env.pop("DURAKIT_FAULT", None)
        self.report = SoakReport(threads=threads)
        self.children: list[Child] = []
        self.active_spans: list[float] = []  # how long unkilled children advanced their thread
        self.settings = KitSettings.from_env()
        self.tracked: dict[str, Tracked] = {}
        with Runner.open() as runner:
            self.url = runner.database.url
            self.embedded = runner.database.embedded
            for n in range(threads):
                scenario = SCENARIOS[n % len(SCENARIOS)]
                request, ids = scenario.setup(runner)
                thread_id = thread_id_for(scenario.template, request)
                self.tracked[thread_id] = Tracked(scenario, request, ids, thread_id)
        if restart_every and not self.embedded:
            raise SystemExit("--restart-every restarts the embedded PostgreSQL; unset DURAKIT_DATABASE_URL to use it.")

    # The loop

    def run(self) -> SoakReport:
        started = time.monotonic()
        next_terminate = started + self.terminate_every if self.terminate_every else None
        next_restart = started + self.restart_every if self.restart_every else None
        next_freeze = started + self.freeze_every if self.freeze_every else None
        done: set[str] = set()
        while len(done) < len(self.tracked) and time.monotonic() - started < self.timeout:
            states = self.states()
            self.reap(states)
            self.kill_due(states)
            done = {tid for tid, row in states.items() if row["status"] == "completed"}
            self.spawn(states, done)
            now = time.monotonic()
            if next_terminate and now >= next_terminate:
                self.report.sessions_terminated += self.terminate_sessions()
                next_terminate = now + self.terminate_every
            if next_restart and now >= next_restart:
                self.restart_database()
                next_restart = time.monotonic() + self.restart_every
            if next_freeze and now >= next_freeze:
                self.freeze_one(states)
                next_freeze = now + self.freeze_every
            self.thaw_due(states)
            time.sleep(0.02)
        for child in self.children:  # out of time: stop what still runs
            if child.frozen_until is not None:
                child.proc.send_signal(signal.SIGCONT)
            child.proc.kill()
            child.proc.wait()
        self.report.seconds = time.monotonic() - started
        self.check()
        return self.report

    def states(self) -> dict[str, dict[str, Any]]:
        from durakit.lease import LEASE_HELD_SQL

        for _attempt in range(100):  # the database may be restarting
            try:
                with psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=5) as conn:
                    sql = STATE_SQL.format(lease_held=LEASE_HELD_SQL.format(thread_id="t.thread_id"))
                    rows = conn.execute(sql, (list(self.tracked),)).fetchall()
                return {row["thread_id"]: row for row in rows}
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise SystemExit("The database did not come back within 20 seconds.")

    def spawn(self, states: dict[str, dict[str, Any]], done: set[str]) -> None:
        busy = {child.thread_id for child in self.children}
        recovering = any(child.action == "recover" for child in self.children)
        candidates: list[tuple[str, str, list[str]]] = []
        stale = [tid for tid, row in states.items() if row["status"] == "running" and not row["lease_held"]]
        if stale and not recovering:
            candidates.append(("recover", None, ["recover", "--json"]))
        for thread_id, tracked in self.tracked.items():
            if thread_id in busy or thread_id in done:
                continue
            row = states.get(thread_id)
            if row is None:
                candidates.append(("run", thread_id, ["run", tracked.scenario.template, "--input",
                                                      json.dumps(tracked.request), "--json"]))
            elif row["status"] == "waiting":
                # Decisions so far (people's and deadlines') say which of the scenario's
                # answers comes next; sleeps come after the last answer.
                answers = list(tracked.scenario.answers[row["answered"]:])
                if row["interrupt"].get("decisions") and not answers:
                    continue  # more questions than the scenario has answers: reported as lost
                kind, value = next_move(row["interrupt"], answers)
                if kind == "timer":
                    self.move_timer(thread_id, value)
                    candidates.append(("worker", thread_id, ["worker", "--burst", "--stalled-after", "2"]))
                else:
                    candidates.append(("approve", thread_id, ["approve", thread_id, "--decision", value,
                                                              "--by", "soak", "--json"]))
            elif row["status"] == "failed":
                candidates.append(("resume", thread_id, ["resume", thread_id, "--json"]))
        self.rng.shuffle(candidates)
        for action, thread_id, args in candidates[: max(0, self.parallel - len(self.children))]:
            self.start_child(action, thread_id, args, states)

    def move_timer(self, thread_id: str, name: str) -> None:
        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=5) as conn:
            timers.move(conn, thread_id, name, datetime.now(UTC))  # a no-op once it fired

    def start_child(self, action: str, thread_id: str | None, args: list[str], states) -> None:
        output, errors = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        proc = subprocess.Popen([sys.executable, "-m", "durakit", *args], env=self.env, stdout=output, stderr=errors)
        last_event = states[thread_id]["last_event"] if thread_id in states else 0
        child = Child(proc, output, errors, action, thread_id, time.monotonic(), last_event)
        if self.rng.random() < self.kill_rate:
            span = statistics.median(self.active_spans[-50:]) if self.active_spans else 0.5
            if action == "recover" or self.rng.random() < 0.2:
                child.kill_from, child.kill_delay = "start", self.rng.uniform(0.0, 1.5 + span)
            else:
                child.kill_from, child.kill_delay = "activity", self.rng.uniform(0.0, span)
        self.children.append(child)
        self.report.children += 1
        if action == "resume":
            self.report.resumed_failed += 1

    def kill_due(self, states: dict[str, dict[str, Any]]) -> None:
        now = time.monotonic()
        for child in self.children:
            row = states.get(child.thread_id or "")
            if child.active_since is None and row is not None and row["last_event"] > child.last_event:
                child.active_since = now
            if child.kill_delay is None or child.killed or child.frozen_until is not None:
                continue
            origin = child.started if child.kill_from == "start" else child.active_since
            if origin is not None and now >= origin + child.kill_delay and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGKILL)
                child.killed = True

    def reap(self, states: dict[str, dict[str, Any]]) -> None:
        still_running = []
        for child in self.children:
            code = child.proc.poll()
            if code is None:
                still_running.append(child)
                continue
            child.errors.seek(0)
            err = child.errors.read().decode(errors="replace")
            child.output.close()
            child.errors.close()
            if code == KILLED:
                self.report.kills += 1
                self.report.kills_by_action[child.action] += 1
                row = states.get(child.thread_id or "")
                if child.action == "recover" or (row is not None and row["last_event"] > child.last_event):
                    self.report.kills_mid_run += 1
                continue
            if child.active_since is not None and code == 0:
                self.active_spans.append(time.monotonic() - child.active_since)
            if code == 4:
                self.report.busy += 1  # another process held the thread: tried again later
            elif code == 5 and (self.terminate_every or self.restart_every):
                self.report.database_away += 1  # its thread, if any, is left for `recover`
            elif code == 1 and child.action != "recover" and " failed at " in err:
                pass  # the thread ended `failed`; a `resume` child continues it
            elif code != 0:
                self.report.unexpected_exits.append(f"{child.action} {child.thread_id}: exit {code}: {err.strip()[-300:]}")
        self.children = still_running

    # Database faults

    def terminate_sessions(self) -> int:
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                return conn.execute(TERMINATE_SQL).fetchone()[0]
        except psycopg.OperationalError:
            return 0

    def freeze_one(self, states: dict[str, dict[str, Any]]) -> None:
        """Freeze a child that is advancing its thread and cut only its lock session: while
        it sleeps, `recover` takes the thread over; when it wakes, its writes must be refused."""
        candidates = [child for child in self.children if child.thread_id and child.active_since is not None
                      and not child.killed and child.frozen_until is None and child.proc.poll() is None]
        if not candidates:
            return
        child = self.rng.choice(candidates)
        child.proc.send_signal(signal.SIGSTOP)
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(CUT_LOCK_SQL, {"thread_id": child.thread_id})
        except psycopg.OperationalError:
            pass
        child.frozen_until = time.monotonic() + self.freeze_for
        child.frozen_at_event = states.get(child.thread_id, {}).get("last_event", 0)
        self.report.freezes += 1

    def thaw_due(self, states: dict[str, dict[str, Any]]) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.frozen_until is not None and now >= child.frozen_until:
                if states.get(child.thread_id, {}).get("last_event", 0) > child.frozen_at_event:
                    self.report.taken_over += 1
                child.proc.send_signal(signal.SIGCONT)
                child.frozen_until = None

    def restart_database(self) -> None:
        db.stop_embedded(self.settings.home)
        time.sleep(self.rng.uniform(0.0, 1.0))
        db.start_embedded(self.settings.home)
        self.report.database_restarts += 1

    # The verdict

    def check(self) -> None:
        report = self.report
        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as conn:
            rows = conn.execute("SELECT kind, count(*) AS n FROM durakit_events WHERE thread_id = ANY(%s) GROUP BY kind",
                                (list(self.tracked),)).fetchall()
            kinds = {row["kind"]: row["n"] for row in rows}
            report.recovered, report.reconnected = kinds.get("recovered", 0), kinds.get("reconnected", 0)
            report.forked_chains = conn.execute(FORKED_CHAINS_SQL, (list(self.tracked),)).fetchone()["n"]
            for thread_id, tracked in self.tracked.items():
                row = conn.execute("SELECT status, result FROM durakit_threads WHERE thread_id = %s",
                                   (thread_id,)).fetchone()
                completed = row is not None and row["status"] == "completed"
                report.completed += completed
                if not completed or row["result"]["outcome"] != tracked.scenario.outcome:
                    report.lost += 1
                    self.say(f"  lost: {thread_id} is {row and row['status']} ({row and row['result']})")
                    continue
                effects = tracked.scenario.effects(conn, tracked.ids)
                for name, expected in tracked.scenario.expected.items():
                    report.duplicates += max(0, effects[name] - expected)
                    report.missing_effects += max(0, expected - effects[name])
                    if effects[name] != expected:
                        self.say(f"  {thread_id}: {name} {effects[name]}, expected {expected}")
                report.duplicates += conn.execute(
                    "SELECT count(*) AS n FROM sandbox_requests WHERE idempotency_key LIKE %s AND applied > 1",
                    (f"durakit:{thread_id}:%",),
                ).fetchone()["n"]
                if not self.events_consistent(conn, tracked):
                    report.inconsistent_events += 1
                    kinds = [row["kind"] for row in conn.execute(
                        "SELECT kind FROM durakit_events WHERE thread_id = %s AND kind <> 'node_finished' ORDER BY id",
                        (thread_id,))]
                    self.say(f"  inconsistent event log: {thread_id}: {', '.join(kinds)}")

    def events_consistent(self, conn: psycopg.Connection, tracked: Tracked) -> bool:
        """One `completed` event, last; one `decided` event per answer a person gave, one
        `timer_fired` per decision a timer made (a deadline, a wake-up); every ledger
        entry finished."""
        kinds = [row["kind"] for row in conn.execute(
            "SELECT kind FROM durakit_events WHERE thread_id = %s ORDER BY id", (tracked.thread_id,))]
        decisions = conn.execute("SELECT count(*) AS n FROM durakit_decisions WHERE thread_id = %s",
                                 (tracked.thread_id,)).fetchone()["n"]
        unfinished = conn.execute("SELECT count(*) AS n FROM durakit_effects WHERE thread_id = %s AND status <> 'done'",
                                  (tracked.thread_id,)).fetchone()["n"]
        counts = Counter(kinds)
        people = len([answer for answer in tracked.scenario.answers if answer != LET_IT_PASS])
        return (counts["completed"] == 1 and kinds[-1] == "completed" and unfinished == 0
                and counts["decided"] == people and counts["decided"] + counts["timer_fired"] == decisions)


LOST_LINE = "Lost the database"
BACK_LINE = "The database is back"


def outage_soak(*, threads: int, workers: int, outage_seconds: float, latency_ms: int, timeout: float,
                say=print) -> bool:
    """Threads run by `workers` worker processes that lose the database for `outage_seconds`
    while they work; prints the figures and returns whether every promise held."""
    from bench import workers as bench_workers
    from bench.steps import scratch_database
    from tests.dbproxy import DatabaseProxy

    report = bench_workers.RunReport(workers=workers, kill_every=None, threads=threads)
    with scratch_database() as (url, _display), bench_workers.open_runner(url) as runner, \
            DatabaseProxy(url) as proxy:
        reference = bench_workers.reference_effects(runner)
        tracked = bench_workers.submit_threads(runner, threads)
        people = bench_workers.People(runner, tracked)
        env = bench_workers.worker_env(proxy.url, latency_ms)
        with bench_workers.worker_processes(env) as procs:
            for _ in range(workers):
                procs.start()
            bench_workers.wait_for_workers(runner, workers)
            started = time.monotonic()
            cut_at = restored_at = None
            try:
                while True:
                    statuses = people.statuses()
                    if statuses["completed"] + statuses["failed"] >= threads:
                        break
                    now = time.monotonic()
                    if now - started > timeout:
                        report.timed_out = True
                        break
                    if cut_at is None and statuses["completed"] >= threads // 5:
                        proxy.cut()
                        cut_at = now
                        say(f"  cut the workers' database at {now - started:.0f} s, {statuses['completed']} done")
                    elif cut_at is not None and restored_at is None and now - cut_at >= outage_seconds:
                        proxy.restore()
                        restored_at = now
                        say(f"  restored it after {now - cut_at:.0f} s, {statuses['completed']} done")
                    people.step()
                    for proc in list(procs.procs):
                        if proc.poll() is not None:  # a worker must not exit: reported, not replaced
                            report.problems.append(f"worker pid {proc.pid} exited {proc.returncode}")
                            procs.procs.remove(proc)
                    time.sleep(bench_workers.POLL_SECONDS)
            finally:
                people.close()
            report.seconds = time.monotonic() - started
            alive = len(procs.procs)
            logs = [path.read_text(errors="replace") for path in procs.logs.values()]
            report.job_errors = procs.job_errors()
        if restored_at is None:
            proxy.restore()
            report.problems.append("the threads settled before the outage ended" if cut_at else "no outage")
        said = 0  # workers that said once that they lost the database and once that it was back
        for n, log in enumerate(logs, 1):
            notices = [line for line in log.splitlines() if line.startswith((LOST_LINE, BACK_LINE))]
            lost, back = sum(line.startswith(LOST_LINE) for line in notices), len(notices) - sum(
                line.startswith(LOST_LINE) for line in notices)
            said += lost == back == 1
            if not lost == back <= 1:  # a short outage may pass unnoticed: each loan waited it out
                report.problems.append(f"worker {n} said {lost} times it lost the database, {back} times it was "
                                       f"back: {notices}")
        report.problems += people.unexpected
        with runner.pool.connection() as conn:
            bench_workers.check(conn, tracked, reference, report, say)
    say(f"outage {outage_seconds:g} s under {workers} running workers: {report.completed}/{threads} threads completed "
        f"in {report.seconds:.0f} s, lost {report.lost}, duplicate effects {report.duplicates}, missing effects "
        f"{report.missing_effects}, inconsistent event logs {report.inconsistent_events}")
    say(f"  workers alive throughout {alive}/{workers}, said once they lost the database and once it was back "
        f"{said}/{workers}; connections refused during the cut {proxy.refused}, runs cut and continued "
        f"{report.runs_cut}, recovered {report.recovered}, job errors {len(report.job_errors)}")
    for line in report.problems[:10]:
        say(f"  problem: {line[:300]}")
    return report.ok and alive == workers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="threads to run, spread over the scenarios (default 250; "
                        "100 with --outage-seconds)")
    parser.add_argument("--kill-rate", type=float, default=0.7, help="share of child processes killed (0..1)")
    parser.add_argument("--parallel", type=int, default=4, help="child processes at once")
    parser.add_argument("--latency-ms", type=int, default=20, help="DURAKIT_SANDBOX_LATENCY_MS for the children")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    parser.add_argument("--terminate-every", type=float, help="end every durakit database session this often (s)")
    parser.add_argument("--restart-every", type=float, help="restart the embedded PostgreSQL this often (s)")
    parser.add_argument("--freeze-every", type=float, help="freeze a child advancing its thread this often (s), "
                        "cut only its lock session, and wake it after --freeze-for seconds")
    parser.add_argument("--freeze-for", type=float, default=4.0, help="seconds a frozen child sleeps")
    parser.add_argument("--outage-seconds", type=float,
                        help="instead: cut running workers off the database for this long (see above)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes, with --outage-seconds")
    args = parser.parse_args(argv)
    if args.outage_seconds is not None:
        threads = args.threads or 100
        print(f"outage soak: {threads} threads over {len(SCENARIOS)} scenarios, {args.workers} workers, "
              f"an outage of {args.outage_seconds:g} s, sandbox latency {args.latency_ms} ms")
        ok = outage_soak(threads=threads, workers=args.workers, outage_seconds=args.outage_seconds,
                         latency_ms=args.latency_ms, timeout=args.timeout)
        print("OK" if ok else "FAILED")
        raise SystemExit(0 if ok else 1)
    args.threads = args.threads or 250
    soak = Soak(threads=args.threads, kill_rate=args.kill_rate, parallel=args.parallel, latency_ms=args.latency_ms,
                seed=args.seed, timeout=args.timeout, terminate_every=args.terminate_every,
                restart_every=args.restart_every, freeze_every=args.freeze_every, freeze_for=args.freeze_for)
    print(f"chaos soak: {args.threads} threads over {len(SCENARIOS)} scenarios of the 4 templates, "
          f"kill rate {args.kill_rate}, {args.parallel} at once, sandbox latency {args.latency_ms} ms, seed {args.seed}")
    report = soak.run()
    for line in report.lines():
        print(line)
    for line in report.unexpected_exits[:10]:
        print("  unexpected:", line)
    print("OK" if report.ok else "FAILED")
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
