"""A long-lived process keeps each connection's prepared statements bounded (issue 12 §6).

psycopg-pool's stock check before each loan, `execute("")`, is prepared under a new name
every time (prepare_threshold=0) and then forgotten by psycopg, so the server kept one
statement per loan until the connection was recycled."""

from __future__ import annotations

from contextlib import ExitStack

from durakit.runner import Runner

COUNT_PREPARED_SQL = "SELECT count(*) AS count FROM pg_prepared_statements"


def most_prepared_on_a_pooled_connection(runner: Runner) -> int:
    """The largest number of prepared statements held by any connection of the runner's
    pool: all of them are borrowed at once, so each one is looked at."""
    size = runner.pool.get_stats()["pool_size"]
    with ExitStack() as stack:
        conns = [stack.enter_context(runner.pool.connection()) for _ in range(size)]
        return max(conn.execute(COUNT_PREPARED_SQL).fetchone()["count"] for conn in conns)


def run_refunds(runner: Runner, make_order, how_many: int) -> None:
    for _ in range(how_many):
        view = runner.run("refund", {"order_id": make_order(30000), "amount": "19.90", "reason": "arrived broken"})
        assert view.status == "completed"


def test_prepared_statements_do_not_grow_with_the_threads_run(test_database, make_order):
    with Runner.open() as runner:
        run_refunds(runner, make_order, 10)  # every statement the template uses is prepared by now
        warm = most_prepared_on_a_pooled_connection(runner)
        run_refunds(runner, make_order, 40)
        after = most_prepared_on_a_pooled_connection(runner)
    # The statements durakit runs are a fixed set (psycopg caps its cache at 100 per
    # connection anyway); a leak grows with every loan, hundreds for 40 threads.
    assert after <= max(warm, 100) and after - warm <= 5, (warm, after)

