"""Mistakes an operator makes, against the CLI in real processes: an endless or huge
request, a closed stdin, a damaged schema, a listing longer than a screen, a fork while
an answer is still queued for a worker.

Each must end with one plain sentence and the exit code DESIGN.md gives it, in bounded
time and memory, and must write nothing it should not.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import psycopg
import pytest

from durakit import cli, db
from durakit.runner import Runner
from tests.conftest import durakit, durakit_json, table_row_counts, unique
from tests.scenarios import refund_setup

# A request is read before anything else happens: refused well within these.
REFUSED_WITHIN_SECONDS = 30
PEAK_RSS_LIMIT_MB = 200  # an interpreter with the CLI loaded is ~35 MB; reading 1 MB adds ~1 MB
ADDRESS_SPACE_LIMIT = 2 << 30  # the child cannot take the machine's memory even if it tried


def one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("durakit: ") and lines[0].rstrip().endswith("."), stderr
    assert "Traceback" not in stderr and "Unexpected error" not in stderr, stderr
    return lines[0]


@pytest.fixture
def table_counts(test_database):
    """counts(): the row count of every table of the session database."""
    with psycopg.connect(test_database.url, autocommit=True) as conn:
        yield table_row_counts(conn)


# 1. Input size, and a closed stdin


def limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def run_measured(argv: list[str], *, stdin: Any = None) -> tuple[int, str, float, float]:
    """Run `argv` in a child; (exit code, stderr, seconds, the child's peak RSS in MB).
    A child still running after REFUSED_WITHIN_SECONDS is killed and counts as a failure."""
    with tempfile.TemporaryFile() as err:
        started = time.monotonic()
        child = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err,
                                 preexec_fn=limit_address_space)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > REFUSED_WITHIN_SECONDS:
                child.kill()
                child.wait()
                pytest.fail(f"{argv[3:]} still ran after {REFUSED_WITHIN_SECONDS} s")
            time.sleep(0.02)
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return child.returncode, err.read().decode(errors="replace"), time.monotonic() - started, usage.ru_maxrss / 1024


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "durakit", *args]


def padded_request(size: int) -> str:
    """A valid refund request, padded with blanks (which JSON allows) to `size` bytes."""
    text = json.dumps({"order_id": unique("ORD"), "amount": "25.00", "reason": "arrived broken"})
    return text + " " * (size - len(text))


@pytest.mark.parametrize("command", ["run", "submit"])
@pytest.mark.parametrize("source", ["/dev/zero", "2 MB file", "stdin from /dev/zero", "closed stdin"])
def test_an_endless_or_huge_request_is_refused_quickly_in_bounded_memory(table_counts, tmp_path, command, source):
    before = table_counts()
    if source == "/dev/zero":
        argv, stdin = cli_argv(command, "refund", "--input-file", "/dev/zero"), None
    elif source == "2 MB file":
        path = tmp_path / "big.json"
        path.write_text(padded_request(2_000_000))
        argv, stdin = cli_argv(command, "refund", "--input-file", str(path)), None
    elif source == "stdin from /dev/zero":
        argv, stdin = cli_argv(command, "refund", "--input-file", "-"), open("/dev/zero", "rb")  # noqa: SIM115
    else:  # the shell starts durakit with file descriptor 0 closed (not at end of file: closed)
        argv, stdin = ["sh", "-c", 'exec "$@" 0<&-', "sh", *cli_argv(command, "refund", "--input-file", "-")], None
    try:
        code, stderr, seconds, peak_mb = run_measured(argv, stdin=stdin)
    finally:
        if stdin is not None:
            stdin.close()
    assert code == 2, (code, stderr)
    sentence = one_sentence(stderr)
    if source == "closed stdin":
        assert "stdin is closed" in sentence, sentence
    else:
        assert f"larger than {cli.MAX_INPUT_BYTES:,} bytes" in sentence, sentence
    assert peak_mb < PEAK_RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"
    assert table_counts() == before


def test_a_request_of_exactly_the_limit_is_read_whole(tmp_path):
    path = tmp_path / "fits.json"
    path.write_text(padded_request(cli.MAX_INPUT_BYTES))
    assert cli.read_input(None, path) == path.read_text()


def test_input_larger_than_the_limit_is_refused(table_counts):
    """--input has the same limit. Through the CLI's own `main` in this process: the OS caps
    one argument of a child process at 128 KB, but a script calling `main` has no such cap."""
    before = table_counts()
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exited:
        cli.main(["run", "refund", "--input", padded_request(cli.MAX_INPUT_BYTES + 1)])
    assert exited.value.code == 2, err.getvalue()
    assert f"larger than {cli.MAX_INPUT_BYTES:,} bytes" in one_sentence(err.getvalue())
    assert table_counts() == before


# 2. A damaged schema


SCHEMA_TABLES_SQL = """
SELECT tablename FROM pg_tables
WHERE schemaname = 'public' AND tablename <> 'alembic_version' AND tablename NOT LIKE 'sandbox\\_%'
"""


def test_the_schema_check_knows_every_table_the_migrations_make(scratch_database):
    db.upgrade(scratch_database)
    with psycopg.connect(scratch_database) as conn:
        made = {row[0] for row in conn.execute(SCHEMA_TABLES_SQL)}
    assert made == set(db.SCHEMA_TABLES)


@pytest.mark.parametrize("dropped", ["durakit_events", "checkpoint_writes", "procrastinate_jobs"])
def test_a_dropped_table_is_refused_before_anything_happens(scratch_database, dropped):
    """The revision is current but a table is gone: `run` exits 5 naming it, before it
    refunds anything or registers the thread (it once refunded, then died, leaving the
    thread `running` for good)."""
    db.upgrade(scratch_database)
    order_id = unique("ORD")
    with Runner(db.Database(scratch_database, embedded=False)) as seeding:
        seeding.sandbox.add_order(order_id, customer_id=unique("cust"), customer_email=f"{order_id.lower()}@example.com",
                                  amount_cents=30000)
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {dropped} CASCADE")
    request = json.dumps({"order_id": order_id, "amount": "25.00", "reason": "arrived broken"})  # approved at once
    done = durakit("run", "refund", "--input", request, env={"DURAKIT_DATABASE_URL": scratch_database})
    assert done.returncode == 5, (done.returncode, done.stdout, done.stderr)
    sentence = one_sentence(done.stderr)
    assert f"has no table {dropped};" in sentence and "backup" in sentence, sentence
    with psycopg.connect(scratch_database) as conn:
        assert conn.execute("SELECT count(*) FROM sandbox_refunds").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM durakit_threads").fetchone()[0] == 0


# 3. Listings longer than a page

PENDING = 1200  # waiting for a person
SLEEPING = 20  # waiting for a timer: in `threads`, not in `pending`
COMPLETED = 30

# Copies of one real waiting refund's registry row (a listing reads nothing else), each
# updated a second later than the one before: `pending-00001` has waited longest.
CLONE_SQL = """
INSERT INTO durakit_threads (thread_id, template, status, request, business_key, interrupt, waiting_for,
                             worker_managed, created_at, updated_at)
SELECT %(prefix)s || lpad(i::text, 5, '0'), template, %(status)s, request, business_key,
       CASE WHEN %(status)s = 'waiting' THEN interrupt END, %(waiting_for)s, worker_managed,
       now() - make_interval(secs => %(age)s - i), now() - make_interval(secs => %(age)s - i)
FROM durakit_threads, generate_series(1, %(count)s) AS i WHERE thread_id = %(source)s
"""


@pytest.fixture
def long_listing(scratch_database) -> Iterator[tuple[str, str]]:
    """A database with PENDING refunds waiting for approval (one real, the rest copies of its
    row), SLEEPING threads waiting for a timer and COMPLETED ones; (its URL, the real thread)."""
    db.upgrade(scratch_database)
    with Runner(db.Database(scratch_database, embedded=False)) as runner:
        request, _ = refund_setup(runner)
        real = runner.run("refund", request)
    assert real.status == "waiting" and real.interrupt["decisions"]
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        for prefix, status, waiting_for, count in (("pending-", "waiting", "person", PENDING - 1),
                                                   ("sleeping-", "waiting", "timer", SLEEPING),
                                                   ("done-", "completed", None, COMPLETED)):
            conn.execute(CLONE_SQL, {"prefix": prefix, "status": status, "waiting_for": waiting_for, "count": count,
                                     "age": 100_000, "source": real.thread_id})
    yield scratch_database, real.thread_id


def test_pending_and_threads_show_a_page_say_of_how_many_and_page_through_the_rest(long_listing):
    url, newest = long_listing
    env = {"DURAKIT_DATABASE_URL": url}

    def listing(*args: str) -> dict[str, Any]:
        code, data, err = durakit_json(*args, env=env)
        assert code == 0, err
        return data

    first = listing("pending")  # oldest first, a page of the default size, and the total
    assert (first["total"], first["limit"], first["offset"]) == (PENDING, 100, 0)
    assert [view["thread_id"] for view in first["threads"]] == [f"pending-{i:05d}" for i in range(1, 101)]
    assert all(view["interrupt"]["decisions"] == ["approve", "reject"] for view in first["threads"])

    seen = []
    for offset in (0, 1000):
        page = listing("pending", "--limit", "1000", "--offset", str(offset))
        assert page["total"] == PENDING
        seen += [view["thread_id"] for view in page["threads"]]
    assert len(seen) == len(set(seen)) == PENDING and seen[-1] == newest  # nothing twice, nothing left out

    text = durakit("pending", "--limit", "50", "--offset", "50", env=env)
    assert text.returncode == 0, text.stderr
    assert "pending-00051" in text.stdout and "pending-00050" not in text.stdout and "pending-00101" not in text.stdout
    assert "showing 50 of 1,200 from --offset 50; --offset 100 for more." in text.stdout
    last = durakit("pending", "--limit", "1000", "--offset", "1000", env=env)
    assert "showing 200 of 1,200 from --offset 1,000." in last.stdout

    newest_first = listing("threads", "--limit", "20")
    assert newest_first["total"] == PENDING + SLEEPING + COMPLETED and len(newest_first["threads"]) == 20
    assert newest_first["threads"][0]["thread_id"] == newest
    stamps = [view["updated_at"] for view in newest_first["threads"]]
    assert stamps == sorted(stamps, reverse=True)
    waiting = listing("threads", "--status", "waiting", "--limit", "1000", "--offset", str(PENDING))
    assert waiting["total"] == PENDING + SLEEPING and len(waiting["threads"]) == SLEEPING
    text = durakit("threads", "--template", "refund", env=env)
    assert f"showing 100 of {PENDING + SLEEPING + COMPLETED:,}; --offset 100 for more." in text.stdout


@pytest.mark.parametrize("args", [["--limit", "0"], ["--limit", "1001"], ["--limit", "many"], ["--offset", "-1"],
                                  ["--limit", "9" * 30]])
@pytest.mark.parametrize("command", ["threads", "pending"])
def test_a_nonsense_page_is_refused(command, args):
    done = durakit(command, *args)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    one_sentence(done.stderr)


# 4. A fork while an answer waits for a worker


def test_a_fork_is_refused_while_an_answer_waits_for_a_worker(runner, conn):
    """The fork once dropped the queued answer (it asked again) and left the superseded
    source `running` for good; now it is refused until a worker has carried the answer out."""
    request, _ = refund_setup(runner)
    thread_id = runner.submit("refund", request).thread_id
    worked = durakit("worker", "--burst")
    assert worked.returncode == 0, worked.stdout + worked.stderr
    assert runner.status(thread_id).status == "waiting"
    answered = runner.approve(thread_id, "approve", by="dana")
    assert answered.status == "running" and answered.queued

    fork_id = unique("fork")
    refused = durakit("fork", thread_id, "--to", fork_id)
    assert refused.returncode == 4, (refused.returncode, refused.stdout, refused.stderr)
    assert "wait for the worker, then fork" in one_sentence(refused.stderr)
    assert registry_row(conn, fork_id) is None
    assert conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = %s", (fork_id,)).fetchone()["count"] == 0
    source = runner.status(thread_id)
    assert source.superseded_by is None and source.queued

    worked = durakit("worker", "--burst")
    assert worked.returncode == 0, worked.stdout + worked.stderr
    done = runner.status(thread_id)
    assert done.status == "completed" and done.result["outcome"] == "refunded", done
    code, fork, err = durakit_json("fork", thread_id, "--to", fork_id)
    assert code == 0, err
    assert fork["status"] == "completed" and runner.status(thread_id).superseded_by == fork_id


def registry_row(conn, thread_id: str) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM durakit_threads WHERE thread_id = %s", (thread_id,)).fetchone()
