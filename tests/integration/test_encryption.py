"""Encryption at rest (DURAKIT_ENCRYPTION_KEY) against a real PostgreSQL: raw rows hold no
customer data in clear, the right key reads everything back, a wrong or malformed key is
refused with one sentence, ciphertexts are bound to their row, and rows written without
encryption are refused unless DURAKIT_ENCRYPTION_ALLOW_PLAINTEXT is set.

The module runs on a database of its own, emptied after each test: threads encrypted here
would otherwise be unreadable to the keyless tests that list every thread (`pending`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from durakit import db, registry
from durakit.encryption import (
    ALLOW_PLAINTEXT_ENV,
    KEY_ENV,
    PREVIOUS_KEYS_ENV,
    checkpoint_serializer_from_env,
    generate_key,
    rewrap_database,
)
from durakit.errors import CannotDecrypt, EncryptionKeyInvalid, InvalidInput, LedgerMismatch
from durakit.graphs import get_template
from durakit.lease import Lease
from durakit.ledger import EffectLedger
from durakit.runner import Runner
from tests.conftest import create_database, drop_database, durakit, durakit_json
from tests.scenarios import SCENARIOS, answer_for, drive, unique

KEY_A = generate_key()
KEY_B = generate_key()

DURAKIT_TABLES = ("durakit_threads", "durakit_effects", "durakit_decisions", "durakit_events", "durakit_timers")
CHECKPOINT_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


@pytest.fixture(scope="module")
def own_database(test_database) -> Iterator[str]:
    """A migrated database for this module; DURAKIT_DATABASE_URL names it meanwhile."""
    admin_url = test_database.server_url or test_database.url
    name = f"durakit_encryption_{uuid.uuid4().hex[:10]}"
    url = create_database(admin_url, name)
    try:
        db.upgrade(url)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DURAKIT_DATABASE_URL", url)
            yield url
    finally:
        drop_database(admin_url, name)


@pytest.fixture(autouse=True)
def conn(own_database: str) -> Iterator[psycopg.Connection]:
    """A connection to this module's database; its threads are deleted after each test."""
    with psycopg.connect(own_database, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        yield conn
        conn.execute(f"TRUNCATE {', '.join(DURAKIT_TABLES + CHECKPOINT_TABLES)}")


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (KEY_ENV, PREVIOUS_KEYS_ENV, ALLOW_PLAINTEXT_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def plain(no_key, own_database) -> Iterator[Runner]:
    """A runner without encryption, on this module's database."""
    with Runner.open() as runner:
        yield runner


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch, no_key, own_database) -> Iterator[Runner]:
    """A runner with DURAKIT_ENCRYPTION_KEY=KEY_A (in this process and the CLI children it starts)."""
    monkeypatch.setenv(KEY_ENV, KEY_A)
    with Runner.open() as runner:
        yield runner


def seed_order(runner: Runner, email: str) -> str:
    order_id = unique("ORD")
    runner.sandbox.add_order(order_id, customer_id=unique("cust"), customer_email=email, amount_cents=30000)
    return order_id


def table_columns(conn: psycopg.Connection, table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s", (table,)
    ).fetchall()
    return {row["column_name"]: row["data_type"] for row in rows}


def raw_rows(conn: psycopg.Connection, table: str, thread_id: str) -> list[str]:
    """Every row of `table` for the thread as PostgreSQL prints it, plus the bytes of each
    bytea column (a row's text form shows those as hex, which would hide clear text)."""
    found = [row["t"] for row in conn.execute(f"SELECT t::text AS t FROM {table} t WHERE thread_id = %s", (thread_id,))]
    for column, data_type in table_columns(conn, table).items():
        if data_type == "bytea":
            for row in conn.execute(f"SELECT {column} AS b FROM {table} WHERE thread_id = %s", (thread_id,)):
                if row["b"] is not None:
                    found.append(bytes(row["b"]).decode("latin-1"))  # UTF-8 text shows through byte for byte
    return found


def leaks(conn: psycopg.Connection, tables: tuple[str, ...], thread_id: str, secrets: list[str]) -> dict[str, list[str]]:
    """{table: [secrets seen in clear]} for the thread's raw rows."""
    seen: dict[str, list[str]] = {}
    for table in tables:
        text = "\n".join(raw_rows(conn, table, thread_id))
        hits = [secret for secret in secrets if secret in text]
        if hits:
            seen[table] = hits
    return seen


def run_refund_with_secrets(runner: Runner) -> tuple[str, list[str]]:
    """An approved refund whose reason, note and customer email are unique marker strings."""
    marker = unique("secret")
    email = f"{marker}-mail@example.com"
    reason = f"{marker}-reason: parcel crushed, call me at {marker}-call@example.org"
    note = f"{marker}-note: customer is upset"
    order_id = seed_order(runner, email)
    view = runner.run("refund", {"order_id": order_id, "amount": "250.00", "reason": reason})
    assert view.status == "waiting"
    assert order_id in view.interrupt["question"]
    # The same request again reaches the same thread: the stored request is compared decrypted.
    again = runner.run("refund", {"order_id": order_id, "amount": "250.00", "reason": reason})
    assert (again.thread_id, again.status) == (view.thread_id, "waiting")
    done = runner.approve(view.thread_id, "approve", by="dana", note=note)
    assert done.status == "completed"
    assert done.result["outcome"] == "refunded" and done.result["approved_by"] == "dana"
    return view.thread_id, [email, reason, f"{marker}-call@example.org", note]


def test_refund_thread_stores_no_customer_data_in_clear_in_durakit_tables(keyed, conn):
    thread_id, secrets = run_refund_with_secrets(keyed)
    assert leaks(conn, DURAKIT_TABLES, thread_id, secrets) == {}
    # The rows are there, encrypted, with their searchable keys in clear.
    row = conn.execute("SELECT * FROM durakit_threads WHERE thread_id = %s", (thread_id,)).fetchone()
    assert row["template"] == "refund" and row["status"] == "completed"
    assert set(row["request"]) == {"durakit_encrypted"} and row["request"]["durakit_encrypted"].startswith("v1:")
    assert set(row["result"]) == {"durakit_encrypted"}
    effects = conn.execute("SELECT step_key, request, result FROM durakit_effects WHERE thread_id = %s",
                           (thread_id,)).fetchall()
    assert len(effects) >= 5 and all(set(e["request"]) == {"durakit_encrypted"} for e in effects)
    decision = conn.execute("SELECT * FROM durakit_decisions WHERE thread_id = %s", (thread_id,)).fetchone()
    assert (decision["decision"], decision["decided_by"]) == ("approve", "dana")
    assert decision["note"].startswith("durakit_encrypted:v1:") and decision["question"].startswith("durakit_encrypted:")
    decided = conn.execute("SELECT detail FROM durakit_events WHERE thread_id = %s AND kind = 'decided'",
                           (thread_id,)).fetchone()
    assert set(decided["detail"]) == {"durakit_encrypted"}


def test_refund_thread_stores_no_customer_data_in_clear_in_checkpoint_tables(keyed, conn):
    """With a key, durakit's saver stores even str/int channel values as encrypted blobs
    (stock PostgresSaver keeps them in clear in `checkpoints.checkpoint`)."""
    thread_id, secrets = run_refund_with_secrets(keyed)
    assert conn.execute("SELECT count(*) FROM checkpoint_blobs WHERE thread_id = %s", (thread_id,)).fetchone()["count"]
    types = {row["type"] for table in ("checkpoint_blobs", "checkpoint_writes")
             for row in conn.execute(f"SELECT DISTINCT type FROM {table} WHERE thread_id = %s", (thread_id,))}
    assert types - {"empty"} and all(t.endswith("+aesgcm") for t in types - {"empty"}), types
    assert leaks(conn, CHECKPOINT_TABLES, thread_id, secrets) == {}
    # ... and LangGraph reads the thread back through the same serializer.
    snapshot = keyed.engine.graph(get_template("refund")).get_state({"configurable": {"thread_id": thread_id}})
    assert snapshot.values["reason"] == secrets[1] and snapshot.values["outcome"] == "refunded"


def test_without_a_key_the_same_check_finds_the_customer_data(plain, conn):
    """The leak check itself works: without a key, the same data is in clear, bytea included."""
    thread_id, secrets = run_refund_with_secrets(plain)
    seen = leaks(conn, DURAKIT_TABLES + CHECKPOINT_TABLES, thread_id, secrets)
    assert set(seen) >= {"durakit_threads", "durakit_effects", "durakit_decisions", "durakit_events",
                         "checkpoint_blobs", "checkpoint_writes"}, seen
    assert set(seen["durakit_effects"]) == set(secrets[:3])  # the note is not sent anywhere


@pytest.mark.parametrize(
    "scenario",
    [s for s in SCENARIOS if (s.template, s.name) in {
        ("booking", "slot taken"), ("cancellation-save", "approved and saved"), ("escalation", "reassigned then accepted"),
    }],
    ids=lambda s: f"{s.template}:{s.name}",
)
def test_every_template_keeps_the_customer_email_out_of_its_tables(keyed, conn, scenario):
    request, ids = scenario.setup(keyed)
    view = keyed.run(scenario.template, request)
    for answer in scenario.answers:
        view = keyed.approve(view.thread_id, answer_for(answer, view.interrupt), by="sam", note=f"{ids['email']} agreed")
    view = drive(keyed, view, [])  # the reminder or follow-up it sleeps until
    assert view.status == "completed" and view.result["outcome"] == scenario.outcome
    assert leaks(conn, DURAKIT_TABLES + CHECKPOINT_TABLES, view.thread_id, [ids["email"]]) == {}
    # Timers keep their payload (a deadline's answer), readable with the key.
    for timer in keyed.status(view.thread_id).timers:
        assert "durakit_encrypted" not in json.dumps(timer["payload"])


def test_the_same_key_reads_everything_back_through_the_cli(keyed):
    thread_id, secrets = run_refund_with_secrets(keyed)
    email, reason, _, note = secrets
    code, status, stderr = durakit_json("status", thread_id)
    assert code == 0, stderr
    assert status["status"] == "completed" and status["result"]["outcome"] == "refunded"
    requests = {effect["step_key"]: effect["request"] for effect in status["effects"]}
    assert requests["notify_customer"]["to"] == email
    assert requests["sync_crm"]["body"]["reason"] == reason
    code, history, stderr = durakit_json("history", thread_id)
    assert code == 0, stderr
    assert history["decisions"][0]["note"] == note and history["decisions"][0]["question"].startswith("Refund 250.00")
    decided = next(event for event in history["events"] if event["kind"] == "decided")
    assert decided["detail"] == {"decision": "approve", "by": "dana", "note": note, "question_id": "approval:1"}
    text = durakit("status", thread_id)
    assert text.returncode == 0 and "outcome=refunded" in text.stdout and "approved_by=dana" in text.stdout
    listed = durakit("threads", "--template", "refund")
    assert listed.returncode == 0 and thread_id in listed.stdout


def test_a_wrong_key_is_one_plain_sentence_not_garbage(keyed):
    view = keyed.run("refund", {"order_id": seed_order(keyed, "x@example.com"), "amount": "250.00", "reason": "late"})
    for command in (("status", view.thread_id), ("history", view.thread_id), ("pending",),
                    ("approve", view.thread_id, "--decision", "approve", "--by", "dana")):
        done = durakit(*command, env={KEY_ENV: KEY_B})
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert done.stdout == ""
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert "cannot be decrypted with DURAKIT_ENCRYPTION_KEY: it was written with another key" in done.stderr
    assert keyed.status(view.thread_id).status == "waiting"  # the refused approve wrote nothing


def test_a_malformed_key_is_refused_with_one_sentence_and_nothing_is_written(keyed, conn):
    thread_id = unique("refund-malformed")
    for bad in ("not-a-key", KEY_A[:-4], "00" * 32, "g" * 64, KEY_A + KEY_A):
        done = durakit("run", "refund", "--thread-id", thread_id, "--input",
                       json.dumps({"order_id": "ORD-1", "amount": "1.00", "reason": "late"}), env={KEY_ENV: bad})
        assert done.returncode == 2, (bad, done.stderr)
        assert done.stderr.count("\n") == 1 and "DURAKIT_ENCRYPTION_KEY" in done.stderr
        assert bad not in done.stderr  # a key, even a bad one, is never printed
    assert conn.execute("SELECT count(*) FROM durakit_threads WHERE thread_id = %s", (thread_id,)).fetchone()["count"] == 0


def test_a_ciphertext_copied_to_another_thread_does_not_decrypt(keyed, conn):
    first = keyed.run("refund", {"order_id": seed_order(keyed, "a@example.com"), "amount": "250.00", "reason": "one"})
    second = keyed.run("refund", {"order_id": seed_order(keyed, "b@example.com"), "amount": "250.00", "reason": "two"})
    conn.execute(
        "UPDATE durakit_threads SET request = (SELECT request FROM durakit_threads WHERE thread_id = %s) "
        "WHERE thread_id = %s",
        (first.thread_id, second.thread_id),
    )
    with pytest.raises(CannotDecrypt, match=f"Thread {second.thread_id}.*altered, or copied from another row"):
        keyed.status(second.thread_id)
    # Within a thread too: one step's recorded result moved onto another step.
    steps = [row["step_key"] for row in conn.execute(
        "SELECT step_key FROM durakit_effects WHERE thread_id = %s ORDER BY started_at", (first.thread_id,))]
    assert len(steps) >= 2  # the risk judgement and the approval request
    conn.execute(
        "UPDATE durakit_effects SET result = (SELECT result FROM durakit_effects WHERE thread_id = %s "
        "AND step_key = %s) WHERE thread_id = %s AND step_key = %s",
        (first.thread_id, steps[0], first.thread_id, steps[1]),
    )
    with pytest.raises(CannotDecrypt, match="durakit_effects.result"):
        keyed.status(first.thread_id)


def test_encrypted_rows_without_a_key_are_refused_plainly(keyed, monkeypatch):
    view = keyed.run("refund", {"order_id": seed_order(keyed, "c@example.com"), "amount": "250.00", "reason": "late"})
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(CannotDecrypt, match="is encrypted, and DURAKIT_ENCRYPTION_KEY is not set"):
        keyed.status(view.thread_id)


def test_rows_written_before_the_key_are_refused_unless_plaintext_is_allowed(plain, monkeypatch, conn):
    order_id = seed_order(plain, "before@example.com")
    view = plain.run("refund", {"order_id": order_id, "amount": "250.00", "reason": "written in clear"})
    assert view.status == "waiting"

    monkeypatch.setenv(KEY_ENV, KEY_A)
    with Runner.open() as runner:
        with pytest.raises(CannotDecrypt, match=f"stored without encryption.*{ALLOW_PLAINTEXT_ENV}=1"):
            runner.status(view.thread_id)
        with pytest.raises(CannotDecrypt):
            runner.approve(view.thread_id, "approve", by="dana")
    assert conn.execute("SELECT count(*) FROM durakit_decisions WHERE thread_id = %s",
                        (view.thread_id,)).fetchone()["count"] == 0
    done = durakit("status", view.thread_id)
    assert done.returncode == 2 and "stored without encryption" in done.stderr

    # The migration window: the old thread finishes; what it writes from now on is encrypted.
    monkeypatch.setenv(ALLOW_PLAINTEXT_ENV, "1")
    with Runner.open() as runner:
        done = runner.approve(view.thread_id, "approve", by="dana", note="allowed")
        assert done.status == "completed" and done.result["outcome"] == "refunded"
        # the state saved in clear before the key (order id, amount, reason) is still whole
        state = runner.saver.get_tuple({"configurable": {"thread_id": view.thread_id}}).checkpoint["channel_values"]
        assert (state["order_id"], state["amount_cents"], state["reason"]) == (order_id, 25000, "written in clear")
    row = conn.execute("SELECT request, result FROM durakit_threads WHERE thread_id = %s", (view.thread_id,)).fetchone()
    assert row["request"]["reason"] == "written in clear"  # as it was stored
    assert set(row["result"]) == {"durakit_encrypted"}


def test_a_previous_key_still_reads_after_rotation(keyed, monkeypatch):
    view = keyed.run("refund", {"order_id": seed_order(keyed, "d@example.com"), "amount": "250.00", "reason": "late"})
    monkeypatch.setenv(KEY_ENV, KEY_B)
    monkeypatch.setenv(PREVIOUS_KEYS_ENV, KEY_A)
    with Runner.open() as runner:
        assert runner.status(view.thread_id).interrupt["id"] == view.interrupt["id"]
        assert runner.approve(view.thread_id, "approve", by="dana").result["outcome"] == "refunded"
    # The result was written with the new key: the old key alone no longer reads the thread.
    monkeypatch.setenv(KEY_ENV, KEY_A)
    monkeypatch.delenv(PREVIOUS_KEYS_ENV)
    with pytest.raises(CannotDecrypt, match="written with another key"):
        keyed.status(view.thread_id)


def test_the_ledger_compares_decrypted_requests(keyed, conn):
    thread_id = unique("ledger")
    with keyed.pool.connection() as registering:
        registry.create(registering, thread_id, "refund", {}, thread_id)
    ledger = EffectLedger(keyed.pool, Lease(thread_id, epoch=0), lambda: None)
    request = {"to": "e@example.com", "amount_cents": 100}

    def fails(key: str) -> dict:
        raise RuntimeError("the call died before the ledger recorded its result")

    with pytest.raises(RuntimeError):
        ledger.apply("notify", "email", request, fails)
    with pytest.raises(LedgerMismatch):
        ledger.apply("notify", "email", {**request, "amount_cents": 200}, fails)
    # The same request (keys in another order) is recognised, and the call is made again.
    result = ledger.apply("notify", "email", {"amount_cents": 100, "to": "e@example.com"}, lambda key: {"key": key})
    assert result == {"key": f"durakit:{thread_id}:notify"}
    assert ledger.apply("notify", "email", request, fails) == result  # recorded: not called again
    row = conn.execute("SELECT request::text AS r, calls FROM durakit_effects WHERE thread_id = %s", (thread_id,)).fetchone()
    assert "e@example.com" not in row["r"] and row["calls"] == 3  # each attempt counts, the refused one too


def test_previous_keys_need_a_current_key(plain, monkeypatch):
    view = plain.run("refund", {"order_id": seed_order(plain, "f@example.com"), "amount": "1.00", "reason": "late"})
    monkeypatch.setenv(PREVIOUS_KEYS_ENV, KEY_A)
    done = durakit("status", view.thread_id)
    assert done.returncode == 2 and f"{PREVIOUS_KEYS_ENV} is set without {KEY_ENV}" in done.stderr
    with pytest.raises(EncryptionKeyInvalid):
        checkpoint_serializer_from_env()


def test_rewrap_encrypts_old_rows_and_moves_old_keys_to_the_current_one(plain, monkeypatch, conn, own_database):
    # Before encryption: a thread waiting for approval, in clear.
    email = f"{unique('before')}@example.com"
    before = plain.run("refund", {"order_id": seed_order(plain, email), "amount": "250.00", "reason": "in clear"})
    # Under key A: another one.
    monkeypatch.setenv(KEY_ENV, KEY_A)
    with Runner.open() as runner:
        under_a = runner.run("refund", {"order_id": seed_order(runner, "a@example.com"), "amount": "250.00",
                                        "reason": "under A"})
    # Rotate to B, keeping A to read with, and bring everything to B.
    monkeypatch.setenv(KEY_ENV, KEY_B)
    monkeypatch.setenv(PREVIOUS_KEYS_ENV, KEY_A)
    changed = rewrap_database(own_database)
    assert changed["durakit_threads.request"] == 2 and changed["durakit_threads.interrupt"] == 2
    assert changed["checkpoint_blobs"] and changed["checkpoint_writes"]
    assert rewrap_database(own_database) == {}  # nothing left to do
    assert leaks(conn, DURAKIT_TABLES + ("checkpoint_blobs", "checkpoint_writes"), before.thread_id, [email]) == {}

    # Key B alone, plaintext refused: both threads read and finish.
    monkeypatch.delenv(PREVIOUS_KEYS_ENV)
    with Runner.open() as runner:
        for view in (before, under_a):
            assert runner.status(view.thread_id).interrupt["id"] == view.interrupt["id"]
            done = runner.approve(view.thread_id, "approve", by="dana")
            assert done.status == "completed" and done.result["outcome"] == "refunded"
        state = runner.saver.get_tuple({"configurable": {"thread_id": before.thread_id}}).checkpoint["channel_values"]
        assert state["reason"] == "in clear" and state["amount_cents"] == 25000  # kept inline before the key
    assert durakit("history", before.thread_id).returncode == 0


def test_rewrap_needs_a_key(no_key, own_database):
    with pytest.raises(InvalidInput, match=f"Set {KEY_ENV}"):
        rewrap_database(own_database)


def test_without_a_key_a_note_that_looks_encrypted_is_kept_as_typed(plain):
    view = plain.run("refund", {"order_id": seed_order(plain, "g@example.com"), "amount": "250.00", "reason": "late"})
    note = "durakit_encrypted:v1:not really"
    plain.approve(view.thread_id, "approve", by="dana", note=note)
    assert plain.history(view.thread_id).extra["decisions"][0]["note"] == note
