"""Throughput of `durakit worker` processes while they are SIGKILLed: N threads of the
four templates (tests.scenarios.SCENARIOS, round robin) submitted to the queue and run by
W worker processes, one of them killed at random every few seconds and replaced at once;
then every thread and every side effect is checked.

    python -m bench.workers                            # 1000 threads; W = 1, 2, 4; a kill every 3 s
    python -m bench.workers --threads 100 --workers 1,2
    python -m bench.workers --no-kills                 # also each W without kills: what the kills cost
    python -m bench.workers --kill-every 0             # no kills at all

Each worker count gets a scratch database of its own on DURAKIT_DATABASE_URL's server (or
the embedded PostgreSQL), dropped afterwards. Workers are real processes:
`python -m durakit worker --concurrency 4 --poll-interval 0.2 --stalled-after 2`. This
process plays the people and the calendar: it answers each question as it appears
(`Runner.approve`, which queues the answer for the workers), lets a question's deadline
pass where the scenario says nobody answers, and moves the timer of each sleeping thread
(a booking reminder, a follow-up) or passing deadline to now, so that a worker fires it.

Each thread's side effects must equal those of an undisturbed run of its scenario (one
thread of each, run first in this process and compared with tests/scenarios.py's
expectations, which the bench reports if they differ), and no request may be applied
twice under one idempotency key.

Threads/s counts from the workers' start to the last thread settled. To tell what limits
it on a small machine, the CPU time of the workers, of PostgreSQL's sessions on the
scratch database, of PostgreSQL's own processes, of this process and of everything else
is sampled from /proc during each run and printed as a split.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.steps import scratch_database
from durakit.authority import Authority
from durakit.encryption import THREAD_INTERRUPT
from durakit.errors import DurakitError
from durakit.runner import Runner
from durakit.settings import KitSettings
from tests.scenarios import LET_IT_PASS, SCENARIOS, Scenario, answer_for
from tests.scenarios import drive as drive_here


def worker_command(*, concurrency: int = 4, poll_interval: float = 0.2, stalled_after: float = 2.0) -> list[str]:
    return [sys.executable, "-m", "durakit", "worker", "--concurrency", str(concurrency),
            "--poll-interval", f"{poll_interval:g}", "--stalled-after", f"{stalled_after:g}"]


WORKER_COMMAND = worker_command()
POLL_SECONDS = 0.2  # how often this process looks for questions and sleeping threads
PROGRESS_SECONDS = 60  # how often a progress line goes to stderr
RUN_STARTS = {"run_started", "resumed", "recovered", "reconnected", "handed_back", "woken"}
SETTLES = {"interrupted", "completed", "failed", "answer_refused"}


@dataclass
class Tracked:
    """One bench thread: its scenario and the ids its side effects are counted by."""

    scenario: Scenario
    ids: dict[str, str]
    thread_id: str


# CPU accounting from /proc


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPU_CLASSES = ("workers", "PostgreSQL sessions of the bench database", "PostgreSQL server processes",
               "this process (the people)", "everything else")


def proc_stat(pid: int | str) -> tuple[int, int] | None:
    """(CPU ticks used, start time in ticks since boot) of a process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12]), int(fields[19])


def proc_parent(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[1])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


class CpuSampler:
    """Samples every process's CPU ticks from /proc in a background thread, and sorts the
    ticks used between `start` and `stop` into CPU_CLASSES."""

    def __init__(self, dbname: str, worker_pids: set[int], interval: float = 0.5) -> None:
        self.dbname = dbname
        self.worker_pids = worker_pids  # live set: pids are added as workers start
        self.interval = interval
        self.first: dict[tuple[int, int], int] = {}
        self.last: dict[tuple[int, int], int] = {}
        self.kind: dict[tuple[int, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu sampler", daemon=True)
        self.began_ticks = 0
        self.machine: tuple[int, int] = (0, 0)
        self.seconds = 0.0

    def start(self) -> None:
        self.began_ticks = int(float(Path("/proc/uptime").read_text().split()[0]) * CLOCK_TICKS)
        self.machine = machine_ticks()
        self.seconds = time.monotonic()
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        busy, total = machine_ticks()
        self.machine = (busy - self.machine[0], total - self.machine[1])
        self.seconds = time.monotonic() - self.seconds

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            stat = proc_stat(entry.name)
            if stat is None:
                continue
            key = (int(entry.name), stat[1])
            if key not in self.first:
                kind = self.classify(key[0])
                if kind is None:
                    continue  # gone meanwhile
                self.kind[key] = kind
                # A process started during the run counts from zero; an older one from now.
                self.first[key] = 0 if stat[1] >= self.began_ticks else stat[0]
            self.last[key] = stat[0]

    def classify(self, pid: int) -> str | None:
        if pid == os.getpid():
            return CPU_CLASSES[3]
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        if pid in self.worker_pids or (" -m durakit worker " in cmdline and proc_parent(pid) == os.getpid()):
            return CPU_CLASSES[0]
        if cmdline.startswith("postgres") or "/bin/postgres " in cmdline:
            if f" {self.dbname} " in cmdline:
                return CPU_CLASSES[1]
            if "(" in cmdline or "[local]" in cmdline:
                return CPU_CLASSES[4]  # a session of another database
            return CPU_CLASSES[2]
        return CPU_CLASSES[4]

    def split(self) -> dict[str, float]:
        """CPU seconds per class over the run; "everything else" is what the machine used
        beyond the classified processes (so short-lived processes are counted too)."""
        seconds = Counter[str]()
        for key, kind in self.kind.items():
            if kind != CPU_CLASSES[4]:
                seconds[kind] += (self.last[key] - self.first[key]) / CLOCK_TICKS
        seconds[CPU_CLASSES[4]] = max(0.0, self.machine[0] / CLOCK_TICKS - sum(seconds.values()))
        return {kind: seconds[kind] for kind in CPU_CLASSES}

    def capacity(self) -> float:
        """CPU seconds the machine had during the run (cores x wall time)."""
        return self.machine[1] / CLOCK_TICKS


def describe_cpu(sampler: CpuSampler) -> list[str]:
    split, capacity = sampler.split(), sampler.capacity()
    busy = sum(split.values())
    cores = os.cpu_count() or 1
    lines = [f"  CPU over {sampler.seconds:.0f} s on {cores} cores: busy {busy:.0f} of {capacity:.0f} core-s "
             f"({100 * busy / capacity:.0f}%)"]
    for kind, used in split.items():
        lines.append(f"    {kind:<44}{used:>7.1f} core-s {100 * used / capacity:>4.0f}% of the machine")
    workers, database = split[CPU_CLASSES[0]], split[CPU_CLASSES[1]] + split[CPU_CLASSES[2]]
    verdict = "the CPU is saturated" if busy > 0.9 * capacity else "the CPU is not saturated"
    lines.append(f"  limit: {verdict}; the workers use {workers / max(database, 1e-9):.1f} times the CPU of "
                 f"PostgreSQL ({workers:.0f} vs {database:.0f} core-s)")
    return lines


# Worker processes


class WorkerProcesses:
    """W `durakit worker` children, each logging to a file of its own."""

    def __init__(self, env: dict[str, str], log_dir: Path, command: list[str] | None = None) -> None:
        self.env = env
        self.log_dir = log_dir
        self.command = command or WORKER_COMMAND
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: set[int] = set()
        self.logs: dict[int, Path] = {}
        self.started = 0
        self.unexpected_exits: list[str] = []

    def start(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.started += 1
        path = self.log_dir / f"worker-{self.started}.log"
        with open(path, "wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(self.command, env={**self.env, **(extra_env or {})}, stdout=log,
                                    stderr=subprocess.STDOUT)
        self.logs[proc.pid] = path
        self.procs.append(proc)
        self.pids.add(proc.pid)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.procs.remove(proc)

    def kill_random(self, rng: random.Random) -> subprocess.Popen[bytes]:
        """SIGKILL one worker at random and start its replacement at once."""
        self.kill(rng.choice(self.procs))
        return self.start()

    def replace_exited(self) -> None:
        """A worker that exited on its own is an error of the bench's run: note it, replace it."""
        for proc in list(self.procs):
            code = proc.poll()
            if code is not None:
                self.procs.remove(proc)
                self.unexpected_exits.append(f"worker pid {proc.pid} exited {code}")
                self.start()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every worker (each stops at its next step boundary), SIGKILL stragglers."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def job_lines(self, proc: subprocess.Popen[bytes]) -> list[str]:
        """The progress lines of the jobs `proc` has done (see durakit.worker.describe)."""
        text = self.logs[proc.pid].read_text(errors="replace")
        return [line for line in text.splitlines() if line.startswith(("advance ", "fire_timer "))]

    def job_errors(self) -> list[str]:
        """The jobs that ended in an error, from every worker's log."""
        errors = []
        for log in sorted(self.log_dir.glob("worker-*.log")):
            errors += [line for line in log.read_text(errors="replace").splitlines() if ": error after " in line]
        return errors


@contextmanager
def worker_processes(env: dict[str, str], command: list[str] | None = None) -> Iterator[WorkerProcesses]:
    """Worker children that are always stopped (and their logs removed) on the way out."""
    with tempfile.TemporaryDirectory(prefix="durakit-bench-workers-") as log_dir:
        workers = WorkerProcesses(env, Path(log_dir), command)
        try:
            yield workers
        finally:
            workers.stop()


LIVE_WORKERS_SQL = "SELECT count(*) AS n FROM procrastinate_workers WHERE last_heartbeat > now() - interval '1.5 s'"


def wait_for_workers(runner: Runner, count: int, timeout: float = 60.0) -> float:
    """Wait until `count` workers beat; returns the seconds it took."""
    began = time.monotonic()
    while True:
        with runner.pool.connection() as conn:
            if conn.execute(LIVE_WORKERS_SQL).fetchone()["n"] >= count:
                return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise SystemExit(f"{count} workers did not start within {timeout:.0f} s.")
        time.sleep(0.05)


def worker_env(url: str, latency_ms: int = 0) -> dict[str, str]:
    env = {**os.environ, "DURAKIT_DATABASE_URL": url, "DURAKIT_SANDBOX_LATENCY_MS": str(latency_ms)}
    env.pop("DURAKIT_FAULT", None)
    return env


def open_runner(url: str, pool_size: int = 8) -> Runner:
    """A runner on the scratch database for this process, open to every answer."""
    settings = dataclasses.replace(KitSettings.from_env(), database_url=url, pool_max_size=pool_size)
    return Runner.open(settings, authority=Authority.open_to_all())


# The people and the calendar


WAITING_SQL = """
SELECT t.thread_id, t.waiting_for, t.interrupt FROM durakit_threads t WHERE t.status = 'waiting' AND t.worker_managed
"""
STATUS_SQL = "SELECT status, count(*) AS n FROM durakit_threads WHERE worker_managed GROUP BY status"


class People:
    """Answers every question with its scenario's answer as it appears, and moves the
    timer of every sleeping thread to now; the answers are given on a few threads at once."""

    def __init__(self, runner: Runner, tracked: dict[str, Tracked], parallel: int = 4) -> None:
        self.runner = runner
        self.tracked = tracked
        self.executor = ThreadPoolExecutor(parallel, thread_name_prefix="bench-approve")
        self.inflight: set[str] = set()
        self.handled: set[str] = set()  # interrupts answered: a stale look must not answer again
        self.position = Counter[str]()  # answers of its scenario each thread has been given
        self.deadlines_passed = 0
        self.moved: set[tuple[str, str]] = set()
        self.mutex = threading.Lock()
        self.answers = 0
        self.refusals = Counter[str]()  # approve refused (busy, answered already): tried again later
        self.unexpected: list[str] = []

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def statuses(self) -> Counter[str]:
        with self.runner.pool.connection() as conn:
            return Counter({row["status"]: row["n"] for row in conn.execute(STATUS_SQL)})

    def step(self) -> None:
        """One look at the waiting threads: answer the questions, move the timers."""
        with self.runner.pool.connection() as conn:
            rows = conn.execute(WAITING_SQL).fetchall()
        for row in rows:
            thread_id = row["thread_id"]
            interrupt = THREAD_INTERRUPT.open(row["interrupt"], thread_id)
            if row["waiting_for"] == "timer":
                self.wake(thread_id, interrupt["timer"])
            elif row["waiting_for"] == "person":
                self.answer(thread_id, interrupt)

    def wake(self, thread_id: str, timer: str) -> None:
        if (thread_id, timer) in self.moved:
            return
        self.moved.add((thread_id, timer))
        try:
            self.runner.move_timer(thread_id, timer, datetime.now(UTC))
        except DurakitError:
            pass  # fired meanwhile

    def answer(self, thread_id: str, interrupt: dict[str, Any]) -> None:
        """Give the thread's next answer; LET_IT_PASS lets the question's deadline pass
        (moved to now, so that a worker fires it)."""
        with self.mutex:
            if thread_id in self.inflight or interrupt["id"] in self.handled:
                return
            answers = self.tracked[thread_id].scenario.answers
            position = self.position[thread_id]
            if position >= len(answers):
                self.unexpected.append(f"{thread_id}: an unexpected question at {interrupt.get('node')}")
                self.handled.add(interrupt["id"])
                return
            if answers[position] == LET_IT_PASS:
                self.handled.add(interrupt["id"])
                self.position[thread_id] += 1
                self.deadlines_passed += 1
                self.wake(thread_id, interrupt["timer"])
                return
            self.inflight.add(thread_id)
        decision = answer_for(answers[position], interrupt)
        self.executor.submit(self._approve, thread_id, interrupt["id"], decision)

    def _approve(self, thread_id: str, interrupt_id: str, decision: str) -> None:
        try:
            self.runner.approve(thread_id, decision, by="bench")
            with self.mutex:
                self.answers += 1
                self.handled.add(interrupt_id)
                self.position[thread_id] += 1
        except DurakitError as exc:
            with self.mutex:
                self.refusals[type(exc).__name__] += 1
        except Exception as exc:  # noted and reported; the thread is looked at again next time
            with self.mutex:
                self.unexpected.append(f"approve {thread_id}: {type(exc).__name__}: {exc}")
        finally:
            with self.mutex:
                self.inflight.discard(thread_id)


# One run: N threads, W workers


@dataclass
class RunReport:
    workers: int
    kill_every: float | None
    threads: int = 0
    submit_seconds: float = 0.0
    startup_seconds: float = 0.0  # from starting the workers until every one beats
    startup_cpu: float = 0.0  # CPU seconds one worker used by then
    seconds: float = 0.0
    timed_out: bool = False
    kills: int = 0
    workers_started: int = 0
    runs_cut: int = 0  # runs that a kill stopped before they settled, continued by another worker
    recovered: int = 0  # `recovered` runs: a sweep found the thread with no process and no job
    answers: int = 0
    deadlines_passed: int = 0
    timers_moved: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    completed: int = 0
    lost: int = 0
    duplicates: int = 0
    missing_effects: int = 0
    inconsistent_events: int = 0
    job_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    spec_differences: list[str] = field(default_factory=list)
    cpu: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.missing_effects or self.inconsistent_events
                    or self.timed_out or self.problems)

    @property
    def label(self) -> str:
        return f"kill every {self.kill_every:g} s" if self.kill_every else "no kills"

    def line(self) -> str:
        return (f"W={self.workers} ({self.label}): {self.completed}/{self.threads} threads in {self.seconds:.1f} s = "
                f"{self.rate:.2f} threads/s; kills {self.kills}, runs cut and continued {self.runs_cut}, "
                f"recovered {self.recovered}; lost {self.lost}, duplicate effects {self.duplicates}, "
                f"missing effects {self.missing_effects}, inconsistent event logs {self.inconsistent_events}, "
                f"job errors {len(self.job_errors)}" + ("; TIMED OUT" if self.timed_out else ""))


def submit_threads(runner: Runner, count: int) -> dict[str, Tracked]:
    """Set up `count` threads, the scenarios in turn, and queue them all."""
    tracked = {}
    for n in range(count):
        scenario = SCENARIOS[n % len(SCENARIOS)]
        request, ids = scenario.setup(runner)
        view = runner.submit(scenario.template, request)
        tracked[view.thread_id] = Tracked(scenario, ids, view.thread_id)
    return tracked


def measure(url: str, threads: int, workers: int, kill_every: float | None, timeout: float, seed: int,
            say=print) -> RunReport:
    """Submit, run with `workers` worker processes (killing one every `kill_every` s), check."""
    report = RunReport(workers=workers, kill_every=kill_every, threads=threads)
    rng = random.Random(seed)
    with open_runner(url) as runner:
        reference = reference_effects(runner)
        report.spec_differences = spec_differences(reference)
        began = time.perf_counter()
        tracked = submit_threads(runner, threads)
        report.submit_seconds = time.perf_counter() - began
        people = People(runner, tracked)
        with worker_processes(worker_env(url)) as procs:
            sampler = CpuSampler(url.rsplit("/", 1)[-1].split("?")[0], procs.pids)
            sampler.start()
            try:
                drive(people, procs, report, rng, timeout)
            finally:
                sampler.stop()
                people.close()
            report.workers_started = procs.started
            report.job_errors = procs.job_errors()
            report.problems += procs.unexpected_exits
        report.answers, report.refusals = people.answers, people.refusals
        report.deadlines_passed = people.deadlines_passed
        report.timers_moved = len(people.moved)
        report.problems += people.unexpected
        report.cpu = describe_cpu(sampler)
        with runner.pool.connection() as conn:
            check(conn, tracked, reference, report, say)
    return report


def drive(people: People, procs: WorkerProcesses, report: RunReport, rng: random.Random, timeout: float) -> None:
    """Start the workers, then answer, wake and kill until every thread has settled."""
    started = time.monotonic()
    for _ in range(report.workers):
        procs.start()
    report.startup_seconds = wait_for_workers(people.runner, report.workers)
    ticks = [stat[0] for proc in procs.procs if (stat := proc_stat(proc.pid)) is not None]
    report.startup_cpu = sum(ticks) / max(1, len(ticks)) / CLOCK_TICKS
    next_kill = started + report.kill_every if report.kill_every else None
    next_progress = started + PROGRESS_SECONDS
    while True:
        statuses = people.statuses()
        if statuses["completed"] + statuses["failed"] >= report.threads:
            break
        if time.monotonic() >= next_progress:
            next_progress += PROGRESS_SECONDS
            print(f"  ... {time.monotonic() - started:.0f} s: " + ", ".join(f"{n} {status}" for status, n in
                  sorted(statuses.items())) + f"; kills {report.kills}", file=sys.stderr, flush=True)
        if time.monotonic() - started > timeout:
            report.timed_out = True
            break
        people.step()
        procs.replace_exited()
        if next_kill is not None and time.monotonic() >= next_kill:
            procs.kill_random(rng)
            report.kills += 1
            next_kill += report.kill_every
        time.sleep(POLL_SECONDS)
    report.seconds = time.monotonic() - started


# The verdict


def scenario_key(scenario: Scenario) -> str:
    return f"{scenario.template}/{scenario.name}"


def reference_effects(runner: Runner) -> dict[str, dict[str, int]]:
    """What each scenario's side effects come to when one thread of it runs undisturbed in
    this process (answered, its timers fired at once): the yardstick, beside what
    tests/scenarios.py expects, for the threads the workers ran."""
    reference = {}
    for scenario in SCENARIOS:
        request, ids = scenario.setup(runner)
        view = runner.run(scenario.template, request)
        view = drive_here(runner, view, list(scenario.answers))
        if view.status != "completed" or view.result.get("outcome") != scenario.outcome:
            raise SystemExit(f"{scenario_key(scenario)} ends {view.status} ({view.result}) even undisturbed.")
        with runner.pool.connection() as conn:
            reference[scenario_key(scenario)] = scenario.effects(conn, ids)
    return reference


def spec_differences(reference: dict[str, dict[str, int]]) -> list[str]:
    """Where an undisturbed run's effects differ from what tests/scenarios.py expects."""
    lines = []
    for scenario in SCENARIOS:
        got = reference[scenario_key(scenario)]
        for name, expected in scenario.expected.items():
            if got.get(name) != expected:
                lines.append(f"{scenario_key(scenario)}: {name} {got.get(name)} undisturbed, "
                             f"tests/scenarios.py expects {expected}")
    return lines


def check(conn: Any, tracked: dict[str, Tracked], reference: dict[str, dict[str, int]], report: RunReport,
          say=print) -> None:
    """Every thread completed with its scenario's outcome, each side effect once (as many
    as the undisturbed run of its scenario made, and no request applied twice)."""
    events = Counter[str]()
    differences = Counter[tuple[str, str, int, int]]()
    for thread_id, item in tracked.items():
        row = conn.execute("SELECT status, result FROM durakit_threads WHERE thread_id = %s", (thread_id,)).fetchone()
        if row is None or row["status"] != "completed" or (row["result"] or {}).get("outcome") != item.scenario.outcome:
            report.lost += 1
            if report.lost <= 10:
                say(f"  lost: {thread_id} ({scenario_key(item.scenario)}) is {row and row['status']}: "
                    f"{row and row['result']}")
            continue
        report.completed += 1
        effects = item.scenario.effects(conn, item.ids)
        for name, expected in reference[scenario_key(item.scenario)].items():
            report.duplicates += max(0, effects[name] - expected)
            report.missing_effects += max(0, expected - effects[name])
            if effects[name] != expected:
                differences[(scenario_key(item.scenario), name, effects[name], expected)] += 1
        report.duplicates += conn.execute(
            "SELECT count(*) AS n FROM sandbox_requests WHERE idempotency_key LIKE %s AND applied > 1",
            (f"durakit:{thread_id}:%",),
        ).fetchone()["n"]
        kinds = thread_events(conn, thread_id)
        events.update(kind for kind, _ in kinds)
        report.runs_cut += runs_cut(kinds)
        if not events_consistent(conn, item, kinds):
            report.inconsistent_events += 1
            if report.inconsistent_events <= 10:
                say(f"  inconsistent event log: {thread_id} ({scenario_key(item.scenario)}): "
                    f"{[kind for kind, _ in kinds]}")
    for (key, name, got, expected), n in differences.most_common():
        say(f"  {n} threads of {key}: {name} {got}, expected {expected}")
    report.recovered = events["recovered"]


def thread_events(conn: Any, thread_id: str) -> list[tuple[str, str | None]]:
    rows = conn.execute("SELECT kind, node FROM durakit_events WHERE thread_id = %s ORDER BY id", (thread_id,))
    return [(row["kind"], row["node"]) for row in rows]


def runs_cut(kinds: list[tuple[str, str | None]]) -> int:
    """Runs that started and, before settling, were followed by another run's start: a
    kill stopped them and another worker carried the thread on."""
    cut, open_run = 0, False
    for kind, node in kinds:
        if kind in RUN_STARTS and node is None:
            cut += open_run
            open_run = True
        elif kind in SETTLES:
            open_run = False
    return cut


def events_consistent(conn: Any, item: Tracked, kinds: list[tuple[str, str | None]]) -> bool:
    """One `completed` event; one `decided` event per answer a person gives (not the deadlines let pass);
    every ledger entry finished."""
    counts = Counter(kind for kind, _ in kinds)
    unfinished = conn.execute("SELECT count(*) AS n FROM durakit_effects WHERE thread_id = %s AND status <> 'done'",
                              (item.thread_id,)).fetchone()["n"]
    given = sum(answer != LET_IT_PASS for answer in item.scenario.answers)
    return counts["completed"] == 1 and counts["decided"] == given and unfinished == 0


# Output


def summary(reports: list[RunReport]) -> list[str]:
    """One row per run, with threads/s against the fewest workers of the same kill setting."""
    base: dict[float | None, RunReport] = {}
    for report in reports:
        if report.kill_every not in base or report.workers < base[report.kill_every].workers:
            base[report.kill_every] = report
    lines = [f"{'workers':>7}  {'kills':<18}{'threads':>8}{'seconds':>9}{'threads/s':>11}{'ratio':>7}  {'vs':<5}"
             f"{'killed':>7}{'lost':>6}{'dup':>5}{'missing':>9}"]
    for report in reports:
        first = base[report.kill_every]
        ratio = report.rate / first.rate if first.rate else float("nan")
        lines.append(f"{report.workers:>7}  {report.label:<18}{report.completed:>8}{report.seconds:>9.1f}"
                     f"{report.rate:>11.2f}{ratio:>7.2f}  W={first.workers:<3}{report.kills:>7}{report.lost:>6}"
                     f"{report.duplicates:>5}{report.missing_effects:>9}")
    return lines


def print_report(report: RunReport) -> None:
    print(report.line(), flush=True)
    print(f"  submitted {report.threads} threads in {report.submit_seconds:.1f} s; answers given {report.answers}, "
          f"deadlines let pass {report.deadlines_passed}, "
          f"timers moved {report.timers_moved}, approvals refused and retried "
          f"{dict(report.refusals) or 0}")
    print(f"  worker processes started {report.workers_started}; the first {report.workers} beat after "
          f"{report.startup_seconds:.1f} s, having used {report.startup_cpu:.1f} CPU-s each to start")
    for line in report.cpu:
        print(line)
    for line in report.job_errors[:5]:
        print("  job error:", line[:300])
    for line in report.problems[:10]:
        print("  problem:", line[:300])
    print(flush=True)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that the workers are stopped and the scratch
    database dropped on the way out (a `timeout` around the bench sends SIGTERM)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1000, help="threads per worker count, scenarios in turn")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure, comma-separated")
    parser.add_argument("--kill-every", type=float, default=3.0, help="SIGKILL a random worker this often (s); 0: never")
    parser.add_argument("--no-kills", action="store_true", help="also run each worker count without kills")
    parser.add_argument("--timeout", type=float, default=3600, help="give up on a run after this many seconds")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    plans = [(count, args.kill_every or None) for count in counts]
    if args.no_kills and args.kill_every:
        plans += [(count, None) for count in counts]
    print(f"workers bench: {args.threads} threads over {len(SCENARIOS)} scenarios of the 4 templates per run; "
          f"workers: {' '.join(WORKER_COMMAND[1:])}; on {os.cpu_count()} cores", flush=True)
    reports = []
    for count, kill_every in plans:
        with scratch_database() as (url, display):
            if not reports:
                print(f"database: a scratch database on {display}\n", flush=True)
            report = measure(url, args.threads, count, kill_every, args.timeout, args.seed)
        if not reports and report.spec_differences:
            print("note: effects are judged against an undisturbed in-process run of each scenario, which "
                  "differs from tests/scenarios.py's expectations:")
            for line in report.spec_differences:
                print("  ", line)
            print()
        print_report(report)
        reports.append(report)
    for line in summary(reports):
        print(line)
    ok = all(report.ok for report in reports)
    print("OK: every thread completed with its outcome; each side effect once (as many as an undisturbed run, "
          "no request applied twice)" if ok else "FAILED")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
