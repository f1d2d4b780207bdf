"""Cold start: wall time of `durakit status` and `durakit approve` as new processes against
a running database, and of bare imports, in milliseconds (median of N processes each).

    python -m bench.cold                  # DURAKIT_DATABASE_URL, or the embedded PostgreSQL
    python -m bench.cold --runs 20

Each `approve` answers a refund thread of its own, waiting above the auto-approval limit,
and runs it to the end. The comparison floor is a process that only imports stock
LangGraph's PostgreSQL saver, as any LangGraph program on PostgreSQL must; `status` can
start below it because it reads durakit's tables without loading LangGraph. `approve`
resumes a graph, so it cannot start below a process that imports what running one needs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from bench.steps import scratch_database
from durakit.runner import Runner
from tests.scenarios import refund_setup

DURAKIT = [sys.executable, "-m", "durakit"]
IMPORTS = {
    "python -c pass": "pass",
    "import durakit.runner": "import durakit.runner",
    "import durakit.graphs.refund": "import durakit.graphs.refund",
    "stock floor: import PostgresSaver": "from langgraph.checkpoint.postgres import PostgresSaver",
    # What any process that runs a graph imports, and so the floor for `approve`.
    "stock: + StateGraph, Command": "from langgraph.checkpoint.postgres import PostgresSaver\n"
    "from langgraph.graph import StateGraph\nfrom langgraph.types import Command",
}


def wall_ms(command: Sequence[str], env: dict[str, str]) -> float:
    """Milliseconds from starting `command` to its exit; a failed command stops the bench."""
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = (time.perf_counter() - began) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed


def median_ms(commands: Sequence[Sequence[str]], env: dict[str, str]) -> float:
    """The median over all but the first command, which runs untimed to bring the files
    it reads into the page cache, as they are for any command but a machine's first."""
    wall_ms(commands[0], env)
    return statistics.median(wall_ms(command, env) for command in commands[1:])


def waiting_refunds(runner: Runner, count: int) -> list[str]:
    """`count` refund threads, each waiting for an approval (250.00, above the 100.00 limit)."""
    thread_ids = []
    for _ in range(count):
        request, _ = refund_setup(runner)
        view = runner.run("refund", request)
        if view.status != "waiting":
            raise SystemExit(f"Expected a waiting refund thread, got {view.status} ({view.error}).")
        thread_ids.append(view.thread_id)
    return thread_ids


def measure(runs: int, env: dict[str, str]) -> dict[str, float]:
    with Runner.open() as runner:
        watched, *to_approve = waiting_refunds(runner, runs + 2)
    results = {
        "durakit status THREAD": median_ms([[*DURAKIT, "status", watched]] * (runs + 1), env),
        "durakit approve THREAD": median_ms(
            [[*DURAKIT, "approve", thread_id, "--decision", "approve", "--by", "bench"] for thread_id in to_approve],
            env,
        ),
    }
    for label, code in IMPORTS.items():
        results[label] = median_ms([[sys.executable, "-c", code]] * (runs + 1), env)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cold", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="processes per command (median reported)")
    args = parser.parse_args(argv)

    configured = os.environ.get("DURAKIT_DATABASE_URL")
    with scratch_database() as (url, display):
        os.environ["DURAKIT_DATABASE_URL"] = url  # this process's Runner and every child use it
        try:
            results = measure(args.runs, dict(os.environ))
        finally:
            if configured is None:
                del os.environ["DURAKIT_DATABASE_URL"]
            else:
                os.environ["DURAKIT_DATABASE_URL"] = configured

    floor = results["stock floor: import PostgresSaver"]
    print(f"cold processes, median of {args.runs} each, on {display}")
    print(f"{'what':<40}{'ms':>8}{'vs floor':>10}")
    for label, value in results.items():
        print(f"{label:<40}{value:>8.0f}{value / floor:>10.2f}")


if __name__ == "__main__":
    main()
