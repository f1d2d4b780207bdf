"""`Runner.fork` (time travel into a new thread) and `Runner.prune` (retention), against
the real database."""

from __future__ import annotations

from datetime import timedelta

import pytest

from durakit.errors import Conflict, InvalidInput, NotFound
from durakit.runner import Runner
from tests.conftest import unique
from tests.scenarios import booking_setup, refund_effects, refund_setup


def waiting_refund(runner: Runner) -> tuple[str, dict[str, str]]:
    request, ids = refund_setup(runner)
    view = runner.run("refund", request)
    assert view.status == "waiting"
    return view.thread_id, ids


def checkpoint_before(runner: Runner, thread_id: str, node: str) -> str:
    """The id of the checkpoint whose next step is `node`."""
    return next(c["checkpoint_id"] for c in runner.history(thread_id).extra["checkpoints"] if node in c["next"])


def test_a_fork_from_before_the_refund_replays_it_without_refunding_twice(runner, conn):
    source, ids = waiting_refund(runner)
    assert runner.approve(source, "approve", by="dana").status == "completed"
    assert refund_effects(conn, ids)["refunds"] == 1

    fork = unique("fork")
    view = runner.fork(source, fork, checkpoint_id=checkpoint_before(runner, source, "issue_refund"))
    assert view.thread_id == fork and view.status == "running"
    stored = {row["thread_id"]: row["request"] for row in conn.execute(
        "SELECT thread_id, request FROM durakit_threads WHERE thread_id IN (%s, %s)", (source, fork))}
    assert view.template == "refund" and stored[fork] == stored[source]

    done = runner.resume(fork)
    assert done.status == "completed" and done.result["outcome"] == "refunded"
    # the same refund, note and email as the source; an audit record of its own (it names its thread)
    assert refund_effects(conn, ids) == {"refunds": 1, "crm_notes": 1, "emails": 2, "escalations": 0, "audit_records": 2}
    effects = {e["step_key"]: e for e in runner.status(fork).effects}
    assert effects["issue_refund"]["idempotency_key"] == f"durakit:{source}:issue_refund"
    assert effects["issue_refund"]["inherited_from"] == source and effects["write_audit"]["inherited_from"] is None
    kinds = [event["kind"] for event in runner.history(fork).extra["events"]]
    assert kinds[0] == "forked" and kinds[-1] == "completed"
    assert runner.status(source).status == "completed"  # the source is left as it was


def test_a_fork_that_takes_another_path_makes_its_own_effects(runner, conn):
    """The source was rejected; its fork is approved. Steps the fork asks the same of
    (the approval request) are inherited; the customer's email and the audit record now
    say something else, and the refund and CRM note are new, so the fork makes them."""
    source, ids = waiting_refund(runner)
    runner.approve(source, "reject", by="dana", note="no")
    assert refund_effects(conn, ids) == {"refunds": 0, "crm_notes": 0, "emails": 2, "escalations": 0, "audit_records": 1}
    fork = unique("fork")
    view = runner.fork(source, fork, checkpoint_id=checkpoint_before(runner, source, "await_approval"))
    assert view.status == "running" and view.stale  # nothing runs it until asked
    asked = runner.resume(fork)
    assert asked.status == "waiting" and asked.interrupt["node"] == "await_approval"
    assert runner.approve(fork, "approve", by="erin").result["outcome"] == "refunded"

    assert refund_effects(conn, ids) == {"refunds": 1, "crm_notes": 1, "emails": 3, "escalations": 0, "audit_records": 2}
    effects = {e["step_key"]: e for e in runner.status(fork).effects}
    assert effects["request_approval"]["inherited_from"] == source
    assert effects["notify_customer"]["inherited_from"] is None
    assert effects["notify_customer"]["idempotency_key"] == f"durakit:{fork}:notify_customer"
    assert runner.status(source).result["outcome"] == "rejected"


def test_only_the_newest_fork_goes_on(runner, conn):
    """Two live threads for one request could each refund it: a forked thread is superseded."""
    source, ids = waiting_refund(runner)
    fork = unique("fork")
    view = runner.fork(source, fork)
    assert view.status == "waiting" and view.interrupt["question"] == runner.status(source).interrupt["question"]
    assert runner.status(source).superseded_by == fork
    for act in (lambda: runner.approve(source, "approve", by="dana"), lambda: runner.resume(source),
                lambda: runner.fork(source, unique("again"))):
        with pytest.raises(Conflict, match=f"forked into {fork}"):
            act()
    again = unique("again")
    assert runner.fork(fork, again).status == "waiting"  # forking the fork is how to go back again
    assert runner.approve(again, "approve", by="dana").result["outcome"] == "refunded"
    assert refund_effects(conn, ids)["refunds"] == 1
    assert conn.execute("SELECT count(*) FROM durakit_decisions WHERE thread_id = %s", (source,)).fetchone()["count"] == 0


def test_recover_leaves_a_forked_running_thread_alone(runner, conn):
    source, _ = waiting_refund(runner)
    fork = unique("fork")
    runner.fork(source, fork, checkpoint_id=checkpoint_before(runner, source, "await_approval"))
    conn.execute("UPDATE durakit_threads SET status = 'running' WHERE thread_id = %s", (source,))
    resumed = {view.thread_id for view in runner.recover().resumed}
    assert fork in resumed and source not in resumed
    assert runner.status(source).status == "running" and not runner.status(source).stale


def test_fork_refuses_bad_targets_and_changes_nothing(runner, conn):
    source, _ = waiting_refund(runner)
    before = conn.execute("SELECT count(*) FROM durakit_threads").fetchone()["count"]
    with pytest.raises(NotFound):
        runner.fork(unique("no-such-thread"), unique("fork"))
    with pytest.raises(NotFound):
        runner.fork(source, unique("fork"), checkpoint_id="1f0a0000-0000-6000-8000-000000000000")
    with pytest.raises(Conflict):
        runner.fork(source, source)
    with pytest.raises(InvalidInput):
        runner.fork(source, "has spaces")
    with pytest.raises(InvalidInput):
        runner.fork(source, unique("fork"), checkpoint_id="1f0\x00; DROP TABLE checkpoints")
    other, _ = waiting_refund(runner)
    with pytest.raises(Conflict):
        runner.fork(source, other)
    assert conn.execute("SELECT count(*) FROM durakit_threads").fetchone()["count"] == before + 1


def test_prune_keeps_the_last_checkpoints_of_completed_threads_only(runner, conn):
    waiting, _ = waiting_refund(runner)
    done, _ = waiting_refund(runner)
    runner.approve(done, "approve", by="dana")
    sizes = {t: len(runner.history(t).extra["checkpoints"]) for t in (waiting, done)}
    assert sizes[done] > 3

    dry = runner.prune(keep=2, dry_run=True)
    assert done in dry.threads_trimmed and waiting not in dry.threads_trimmed
    assert len(runner.history(done).extra["checkpoints"]) == sizes[done]

    report = runner.prune(keep=2)
    assert done in report.threads_trimmed
    assert len(runner.history(done).extra["checkpoints"]) == 2
    assert len(runner.history(waiting).extra["checkpoints"]) == sizes[waiting]
    assert runner.status(done).status == "completed" and runner.status(done).result["outcome"] == "refunded"
    assert runner.history(done).extra["events"][-1]["kind"] == "pruned"
    assert runner.approve(waiting, "approve", by="dana").status == "completed"


def test_prune_older_than_empties_old_completed_threads_and_keeps_their_audit(runner, conn):
    old, ids = waiting_refund(runner)
    runner.approve(old, "approve", by="dana")
    recent, _ = waiting_refund(runner)
    runner.approve(recent, "approve", by="dana")
    conn.execute("UPDATE durakit_threads SET updated_at = now() - interval '40 days' WHERE thread_id = %s", (old,))

    report = runner.prune(older_than=timedelta(days=30))
    assert old in report.threads_emptied and recent not in report.threads_emptied
    assert runner.history(old).extra["checkpoints"] == [] and len(runner.history(recent).extra["checkpoints"]) > 3
    assert runner.status(old).status == "completed" and runner.status(old).effects
    # the same request reaches the finished thread instead of refunding again
    again = runner.run("refund", {"order_id": ids["order"], "amount": "250.00", "reason": "arrived broken"})
    assert again.thread_id == old and again.status == "completed"
    assert refund_effects(conn, ids)["refunds"] == 1
    with pytest.raises(NotFound, match="no checkpoints"):
        runner.fork(old, unique("fork"))
    assert old not in runner.prune(older_than=timedelta(days=30)).threads_emptied  # once is enough


def test_a_fork_takes_over_the_timers_of_its_source(runner, conn):
    request, _ = booking_setup()(runner)
    source = runner.run("booking", request)
    assert source.status == "waiting" and source.interrupt["timer"] == "reminder"
    fork = unique("fork")
    runner.fork(source.thread_id, fork)
    timers = "SELECT name, status FROM durakit_timers WHERE thread_id = %s ORDER BY name"
    reminders = conn.execute(timers, (source.thread_id,)).fetchall()
    assert reminders and {row["status"] for row in reminders} == {"cancelled"}
    assert conn.execute(timers, (fork,)).fetchall() == [{**row, "status": "scheduled"} for row in reminders]
