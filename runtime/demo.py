"""`durakit demo`: the refund story in four acts, on the configured database.

Each run seeds its own orders and uses fresh thread ids (suffix: the time it started),
so the demo can be run again and again; earlier runs stay visible in `durakit threads`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from durakit.output import console, effects_table
from durakit.runner import Runner, ThreadView

CUSTOMER = {"customer_id": "cust-ada", "customer_email": "ada@example.com"}
TOUR_ORDERS = ("ORD-42", "ORD-43")  # used by README's tour


def act(title: str) -> None:
    console.print(f"\n[bold]{title}[/bold]")


def show(view: ThreadView) -> None:
    result = view.result or {}
    detail = f" -> {result.get('outcome')} (refund {result.get('refund_id')})" if view.status == "completed" else ""
    console.print(f"  {view.thread_id}: {view.status}{detail}")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `durakit ARGS` as a separate process, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "durakit", *args], env={**os.environ, **(env or {})}, capture_output=True, text=True
    )


def main() -> None:
    run_id = time.strftime("%Y%m%d%H%M%S")
    with Runner.open() as runner:
        console.print(f"durakit demo on {runner.database.display}; this run's ids end in -{run_id}.")
        orders = {name: f"ORD-{name}-{run_id}" for name in ("small", "large", "crash")}
        for order_id in (*orders.values(), *TOUR_ORDERS):
            runner.sandbox.add_order(order_id, amount_cents=30000, **CUSTOMER)

        act("1. A small refund completes on its own")
        console.print("  19.90 EUR of a 300.00 EUR order, low risk, under the 100.00 EUR auto-approval limit.")
        small = runner.run("refund", {"order_id": orders["small"], "amount": "19.90", "reason": "late delivery"})
        show(small)

        act("2. A large refund stops and waits for a person")
        large = runner.run("refund", {"order_id": orders["large"], "amount": "250.00", "reason": "arrived broken"})
        show(large)
        console.print(f"  question: {large.interrupt['question']} (risk {large.interrupt['risk']})")
        console.print("  The thread is saved in PostgreSQL; it could wait for days. Approving through the Python API:")
        console.print(f"  runner.approve({large.thread_id!r}, 'approve', by='dana')")
        large = runner.approve(large.thread_id, "approve", by="dana", note="long-time customer")
        show(large)

        act("3. A process is killed in the middle of the refund step, and another one finishes the job")
        request = f'{{"order_id": "{orders["crash"]}", "amount": "60.00", "reason": "wrong size"}}'
        console.print("  child: DURAKIT_FAULT=issue_refund:after_effect durakit run refund ...")
        console.print("  (it SIGKILLs itself after billing applied the refund, before the ledger recorded it)")
        child = cli("run", "refund", "--input", request, env={"DURAKIT_FAULT": "issue_refund:after_effect"})
        killed = child.returncode == -signal.SIGKILL
        console.print(f"  child exit: {'killed by SIGKILL' if killed else child.returncode}")
        crash_id = f"refund-{orders['crash']}"
        stale = runner.status(crash_id)
        console.print(f"  {crash_id}: {stale.status}, its process gone: {stale.stale}")
        console.print("  a new process: durakit recover")
        recovered = cli("recover")
        console.print("  " + (recovered.stdout.strip() or recovered.stderr.strip()).replace("\n", "\n  "))
        crash = runner.status(crash_id)
        show(crash)

        act("4. The side-effect ledger: every refund issued exactly once")
        for view in (small, large, crash):
            console.print(f"  {view.thread_id}")
            console.print(effects_table(runner.status(view.thread_id).effects))
        with runner.pool.connection() as conn:
            counts = conn.execute(
                "SELECT order_id, count(*) AS refunds FROM sandbox_refunds WHERE order_id = ANY(%s) GROUP BY order_id",
                (list(orders.values()),),
            ).fetchall()
        for row in counts:
            console.print(f"  billing holds {row['refunds']} refund(s) for {row['order_id']}")
        console.print(
            "\n  The crashed thread's billing call was received twice and applied once: the call after the crash"
            "\n  carried the same idempotency key, so billing replayed its first answer."
        )
        ok = killed and all(row["refunds"] == 1 for row in counts) and len(counts) == 3
        ok = ok and all(v.status == "completed" for v in (small, large, crash))
    if not ok:
        console.print("\n[red]The demo did not end as expected; see above.[/red]")
        raise SystemExit(1)
    console.print(
        f"\nNext: `durakit threads`, `durakit history THREAD_ID`, and README's tour "
        f"(the sandbox now holds its orders {' and '.join(TOUR_ORDERS)}, 300.00 EUR each)."
    )
