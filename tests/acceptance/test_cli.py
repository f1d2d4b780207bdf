"""The CLI contract of DESIGN.md: --json output and exit codes, one sentence on stderr."""

from __future__ import annotations

import json

import pytest
from psycopg import sql

from tests.conftest import durakit, durakit_json, unique

CONTRACT_KEYS = {"thread_id", "template", "status", "interrupt", "result", "error"}


def one_sentence(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("durakit: ") and "Traceback" not in stderr


def refund_input(order_id: str, amount: str, **extra: str) -> str:
    return json.dumps({"order_id": order_id, "amount": amount, "reason": "arrived broken", **extra})


@pytest.fixture
def waiting_thread(make_order) -> str:
    order_id = make_order(30000)
    code, view, stderr = durakit_json("run", "refund", "--input", refund_input(order_id, "250.00"))
    assert code == 0, stderr
    assert view["status"] == "waiting"
    return view["thread_id"]


def test_run_completed_prints_the_contract_fields(make_order):
    order_id = make_order(30000)
    code, view, _ = durakit_json("run", "refund", "--input", refund_input(order_id, "10.00"))
    assert code == 0
    assert CONTRACT_KEYS <= view.keys()
    assert view["thread_id"] == f"refund-{order_id}"
    assert (view["template"], view["status"], view["interrupt"], view["error"]) == ("refund", "completed", None, None)
    assert view["result"]["outcome"] == "refunded"


def test_run_waiting_is_a_success_and_shows_the_question(waiting_thread):
    code, view, _ = durakit_json("status", waiting_thread)
    assert code == 0
    assert view["status"] == "waiting"
    assert view["interrupt"]["decisions"] == ["approve", "reject"]
    assert view["interrupt"]["answer_schema"]["required"] == ["decision", "by"]


def test_run_from_a_file_and_from_stdin_with_an_explicit_thread_id(make_order, tmp_path):
    path = tmp_path / "request.json"
    path.write_text(refund_input(make_order(30000), "10.00"))
    thread_id = unique("my-thread")
    code, view, _ = durakit_json("run", "refund", "--input-file", str(path), "--thread-id", thread_id)
    assert (code, view["thread_id"], view["status"]) == (0, thread_id, "completed")
    piped = durakit("run", "refund", "--input-file", "-", "--json", stdin=refund_input(make_order(30000), "10.00"))
    assert piped.returncode == 0 and json.loads(piped.stdout)["status"] == "completed"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["run", "refund", "--input", "{not json"], 2),
        (["run", "refund", "--input", '{"order_id": "A", "amount": "0", "reason": "x"}'], 2),
        (["run", "refund"], 2),
        (["run", "refund", "--input", "{}", "--input-file", "x.json"], 2),
        (["run", "refund", "--input-file", "/no/such/file.json"], 2),
        (["run", "refund", "--input", '{"order_id": "A", "amount": "5", "reason": "x"}', "--thread-id", "a b"], 2),
        (["run", "no-such-template", "--input", "{}"], 3),
        (["frobnicate"], 2),
        (["approve", "x"], 2),
        (["status", "no-such-thread"], 3),
        (["history", "no-such-thread"], 3),
        (["resume", "no-such-thread"], 3),
        (["approve", "no-such-thread", "--decision", "approve"], 3),
        (["threads", "--status", "sleeping"], 2),
        (["threads", "--template", "no-such-template"], 3),
    ],
)
def test_bad_input_exits_with_the_contract_code_and_one_sentence(args, code, conn):
    before = conn.execute("SELECT count(*) FROM durakit_threads").fetchone()["count"]
    done = durakit(*args)
    assert done.returncode == code, done.stderr
    assert one_sentence(done.stderr), done.stderr
    assert done.stdout == ""
    assert conn.execute("SELECT count(*) FROM durakit_threads").fetchone()["count"] == before


def test_approve_contract(waiting_thread, conn):
    wrong = durakit("approve", waiting_thread, "--decision", "maybe", "--by", "dana")
    assert wrong.returncode == 2 and one_sentence(wrong.stderr)
    assert "approve, reject" in wrong.stderr

    code, view, _ = durakit_json("approve", waiting_thread, "--decision", "approve", "--by", "dana", "--note", "ok")
    assert (code, view["status"], view["result"]["approved_by"]) == (0, "completed", "dana")

    again = durakit("approve", waiting_thread, "--decision", "approve", "--by", "kim")
    assert again.returncode == 4 and one_sentence(again.stderr)
    assert conn.execute("SELECT count(*) FROM durakit_decisions WHERE thread_id = %s", (waiting_thread,)).fetchone()["count"] == 1


def test_approve_defaults_by_to_the_user(waiting_thread, conn):
    assert durakit("approve", waiting_thread, "--decision", "reject").returncode == 0
    decided_by = conn.execute("SELECT decided_by FROM durakit_decisions WHERE thread_id = %s", (waiting_thread,)).fetchone()
    assert decided_by["decided_by"]


def test_resume_contract(waiting_thread):
    waiting = durakit("resume", waiting_thread)
    assert waiting.returncode == 4 and "durakit approve" in waiting.stderr
    durakit("approve", waiting_thread, "--decision", "approve", "--by", "dana")
    done = durakit("resume", waiting_thread)
    assert done.returncode == 4 and "already completed" in done.stderr


def test_threads_and_pending(waiting_thread, make_order):
    code, listing, _ = durakit_json("threads", "--status", "waiting", "--template", "refund")
    assert code == 0
    assert waiting_thread in [view["thread_id"] for view in listing["threads"]]
    assert {view["status"] for view in listing["threads"]} == {"waiting"}
    code, pending, _ = durakit_json("pending", "--limit", "1000")  # oldest first
    assert code == 0
    mine = next(view for view in pending["threads"] if view["thread_id"] == waiting_thread)
    assert "Refund 250.00 EUR" in mine["interrupt"]["question"]
    text = durakit("pending", "--limit", "1000")
    assert text.returncode == 0 and waiting_thread in text.stdout


def test_status_and_history_show_effects_events_and_decisions(waiting_thread):
    durakit("approve", waiting_thread, "--decision", "approve", "--by", "dana")
    code, status, _ = durakit_json("status", waiting_thread)
    assert code == 0
    refund = next(effect for effect in status["effects"] if effect["step_key"] == "issue_refund")
    assert (refund["calls"], refund["received"], refund["applied"]) == (1, 1, 1)
    code, history, _ = durakit_json("history", waiting_thread)
    assert code == 0
    assert CONTRACT_KEYS <= history.keys()
    assert history["decisions"][0]["decided_by"] == "dana"
    assert [e["kind"] for e in history["events"]][-1] == "completed"
    assert history["checkpoints"]
    text = durakit("history", waiting_thread)
    assert text.returncode == 0 and "node_finished" in text.stdout


def test_recover_with_nothing_to_do():
    code, report, _ = durakit_json("recover")
    assert code == 0
    assert set(report) == {"resumed", "busy", "errors"}
    assert report["errors"] == {}


def test_templates_lists_all_four_with_their_input_schemas():
    code, listing, _ = durakit_json("templates")
    assert code == 0
    required = {t["name"]: set(t["input_schema"]["required"]) for t in listing["templates"]}
    assert required == {
        "refund": {"order_id", "amount", "reason"},
        "booking": {"customer_id", "customer_email", "slot"},
        "cancellation-save": {"account_id", "reason"},
        "escalation": {"conversation_id", "customer_id", "customer_email", "subject", "message"},
    }


def test_help_teaches_each_command():
    for command in ("run", "resume", "approve", "status", "history", "threads", "pending", "recover", "templates", "demo"):
        done = durakit(command, "--help")
        assert done.returncode == 0 and "Usage: durakit" in done.stdout
    db_help = durakit("db", "--help")
    assert db_help.returncode == 0 and "upgrade" in db_help.stdout and "stop" in db_help.stdout


def test_failed_thread_exits_1_and_resume_completes_it_after_the_fix(make_order, conn):
    order_id = make_order(30000)
    # An outside-system error that is not transient: the refund step fails for good.
    block = sql.SQL("ALTER TABLE sandbox_refunds ADD CONSTRAINT durakit_test_block CHECK (order_id <> {})")
    conn.execute(block.format(sql.Literal(order_id)))
    try:
        code, view, stderr = durakit_json("run", "refund", "--input", refund_input(order_id, "10.00"))
        assert code == 1 and one_sentence(stderr) and "durakit resume" in stderr
        assert (view["status"], view["error_node"]) == ("failed", "issue_refund")
        assert "CheckViolation" in view["error"]
        code, failed, _ = durakit_json("threads", "--status", "failed")
        assert view["thread_id"] in [v["thread_id"] for v in failed["threads"]]
    finally:
        conn.execute("ALTER TABLE sandbox_refunds DROP CONSTRAINT durakit_test_block")
    code, resumed, _ = durakit_json("resume", view["thread_id"])
    assert (code, resumed["status"], resumed["result"]["outcome"]) == (0, "completed", "refunded")
    assert conn.execute("SELECT count(*) FROM sandbox_refunds WHERE order_id = %s", (order_id,)).fetchone()["count"] == 1


def test_schema_behind_exits_5_until_db_upgrade(scratch_database):
    env = {"DURAKIT_DATABASE_URL": scratch_database}
    behind = durakit("threads", env=env)
    assert behind.returncode == 5 and one_sentence(behind.stderr)
    assert "durakit db upgrade" in behind.stderr
    upgraded = durakit("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert durakit("threads", env=env).returncode == 0


def test_unreachable_database_exits_5_quickly():
    env = {"DURAKIT_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"}
    for args in (["threads"], ["db", "upgrade"]):
        done = durakit(*args, env=env)
        assert done.returncode == 5 and one_sentence(done.stderr), done.stderr
        assert "Cannot reach the database" in done.stderr


def test_malformed_fault_setting_is_refused(make_order):
    done = durakit("run", "refund", "--input", refund_input(make_order(), "5.00"), env={"DURAKIT_FAULT": "nonsense"})
    assert done.returncode == 2 and one_sentence(done.stderr)


def test_text_output_shows_customer_text_as_typed_even_when_it_looks_like_markup():
    customer = unique("cust")
    request = {"conversation_id": unique("CONV"), "customer_id": customer, "customer_email": f"{customer}@example.com",
               "subject": "[/b] checkout [red]broken", "message": "Nobody can pay [/x"}
    done = durakit("run", "escalation", "--input", json.dumps(request))
    assert done.returncode == 0, done.stderr
    assert "[/b] checkout [red]broken" in done.stdout
    thread_id = f"escalation-{request['conversation_id']}"
    done = durakit("approve", thread_id, "--decision", "accept", "--by", "ann [/x", "--note", "] see [bold]")
    assert done.returncode == 0, done.stderr
    history = durakit("history", thread_id)
    assert history.returncode == 0, history.stderr
    assert "ann [/x" in history.stdout and "] see [bold]" in history.stdout


def test_history_lists_checkpoints_and_fork_replays_from_one(waiting_thread, conn):
    text = durakit("history", waiting_thread)
    assert text.returncode == 0 and "checkpoint id" in text.stdout and "await_approval" in text.stdout
    _, history, _ = durakit_json("history", waiting_thread)
    before_question = next(c["checkpoint_id"] for c in history["checkpoints"] if c["next"] == ["await_approval"])

    fork = unique("fork")
    code, view, stderr = durakit_json("fork", waiting_thread, "--to", fork, "--checkpoint", before_question)
    assert code == 0, stderr
    assert (view["thread_id"], view["status"], view["stale"]) == (fork, "running", True)
    code, view, _ = durakit_json("resume", fork)
    assert (code, view["status"]) == (0, "waiting")
    shown = durakit("status", fork).stdout
    assert "request_approval" in shown and "done (inherited)" in shown  # the approval email was not sent again
    assert f"forked into {fork}" in durakit("status", waiting_thread).stdout


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["fork", "refund-nope-{u}", "--to", "fork-{u}"], 3),
        (["fork", "{thread}", "--to", "fork-{u}", "--checkpoint", "1f0-no-such"], 3),
        (["fork", "{thread}", "--to", "{thread}"], 4),
        (["fork", "{thread}", "--to", "bad id"], 2),
        (["prune"], 2),
        (["prune", "--keep", "0"], 2),
        (["prune", "--keep", "99999999999999999999"], 2),
        (["prune", "--older-than", "30x"], 2),
        (["prune", "--older-than", "0d"], 2),
        (["prune", "--older-than", "\u00b2d"], 2),
        (["prune", "--older-than", "9" * 5000 + "d"], 2),
    ],
)
def test_fork_and_prune_refuse_bad_input_with_one_sentence_and_change_nothing(waiting_thread, conn, args, code):
    counts = "SELECT (SELECT count(*) FROM durakit_threads) + (SELECT count(*) FROM checkpoints) AS n"
    before = conn.execute(counts).fetchone()["n"]
    u = unique("x")
    done = durakit(*[a.format(u=u, thread=waiting_thread) for a in args])
    assert done.returncode == code, done.stderr
    assert one_sentence(done.stderr)
    assert conn.execute(counts).fetchone()["n"] == before


def test_prune_dry_run_reports_and_changes_nothing(make_order, conn):
    order_id = make_order(30000)
    code, view, _ = durakit_json("run", "refund", "--input", refund_input(order_id, "10.00"))
    assert view["status"] == "completed"
    checkpoints = "SELECT count(*) FROM checkpoints WHERE thread_id = %s"
    before = conn.execute(checkpoints, (view["thread_id"],)).fetchone()["count"]
    code, report, _ = durakit_json("prune", "--keep", "1", "--dry-run")
    assert code == 0 and report["dry_run"] and view["thread_id"] in report["threads_trimmed"]
    assert conn.execute(checkpoints, (view["thread_id"],)).fetchone()["count"] == before
    text = durakit("prune", "--keep", "1")
    assert text.returncode == 0 and "removed" in text.stdout
    assert conn.execute(checkpoints, (view["thread_id"],)).fetchone()["count"] == 1
