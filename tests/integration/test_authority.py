"""Approval authority: who may answer which question is configuration, refusals are
logged, and every decision records who answered what, when, to which question and
under which roles."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from durakit.authority import Authority, Rule
from durakit.errors import InvalidInput, NotAuthorized
from durakit.runner import Runner
from tests.conftest import durakit

POLICY = """
[people]
dana = ["agent"]
sam = ["agent", "supervisor"]

[[rules]]
template = "refund"
roles = ["agent", "supervisor"]

[[rules]]
template = "refund"
question = "await_approval"
roles = ["supervisor"]
when_above = { amount_cents = 20000 }

[[rules]]
template = "cancellation-save"
question = "await_supervisor"
roles = ["supervisor"]
when_above = { "offer.value_cents" = 5000 }
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "authority.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def governed(test_database, policy_file: Path) -> Iterator[Runner]:
    with Runner.open(authority=Authority.from_file(policy_file)) as runner:
        yield runner


def refund(runner: Runner, order_id: str, amount: str):
    return runner.run("refund", {"order_id": order_id, "amount": amount, "reason": "arrived broken"})


def test_a_refund_above_the_limit_needs_a_supervisor_and_a_refusal_is_logged(governed, make_order, conn):
    view = refund(governed, make_order(30000), "250.00")
    assert view.status == "waiting"
    with pytest.raises(NotAuthorized, match="dana may not answer") as refused:
        governed.approve(view.thread_id, "approve", by="dana")
    assert refused.value.exit_code == 4
    assert governed.status(view.thread_id).status == "waiting"
    assert conn.execute("SELECT count(*) FROM durakit_decisions WHERE thread_id = %s",
                        (view.thread_id,)).fetchone()["count"] == 0
    logged = conn.execute("SELECT node, detail FROM durakit_events WHERE thread_id = %s AND kind = 'decision_refused'",
                          (view.thread_id,)).fetchall()
    assert [(row["node"], row["detail"]["by"], row["detail"]["decision"]) for row in logged] == [
        ("await_approval", "dana", "approve")]

    done = governed.approve(view.thread_id, "approve", by="sam", note="checked the photos")
    assert (done.status, done.result["approved_by"]) == ("completed", "sam")
    decision = conn.execute("SELECT * FROM durakit_decisions WHERE thread_id = %s", (view.thread_id,)).fetchone()
    assert decision["interrupt_id"] == view.interrupt["id"]
    assert (decision["node"], decision["decision"], decision["decided_by"]) == ("await_approval", "approve", "sam")
    assert decision["question"] == view.interrupt["question"]
    assert decision["note"] == "checked the photos"
    assert set(decision["authorized_as"]) == {"agent", "supervisor"}
    assert decision["decided_at"] is not None


def test_below_the_limit_an_agent_may_answer_and_a_stranger_may_not(governed, make_order, conn):
    view = refund(governed, make_order(30000), "150.00")
    with pytest.raises(NotAuthorized):
        governed.approve(view.thread_id, "approve", by="eve")
    done = governed.approve(view.thread_id, "reject", by="dana")
    assert done.result["outcome"] == "rejected"
    row = conn.execute("SELECT authorized_as FROM durakit_decisions WHERE thread_id = %s", (view.thread_id,)).fetchone()
    assert row["authorized_as"] == ["agent"]


def test_without_a_policy_anyone_may_answer_and_no_role_is_recorded(runner, make_order, conn, monkeypatch):
    monkeypatch.delenv("DURAKIT_AUTHORITY_FILE", raising=False)
    view = refund(runner, make_order(30000), "250.00")
    runner.approve(view.thread_id, "approve", by="anyone")
    row = conn.execute("SELECT authorized_as FROM durakit_decisions WHERE thread_id = %s", (view.thread_id,)).fetchone()
    assert row["authorized_as"] == []


def test_a_rule_can_look_inside_the_question_details(governed, make_account):
    view = governed.run("cancellation-save", {"account_id": make_account(support_tickets=4), "reason": "too expensive"})
    assert view.interrupt["node"] == "await_supervisor" and view.interrupt["offer"]["value_cents"] > 5000
    with pytest.raises(NotAuthorized, match="offer.value_cents above 5000"):
        governed.approve(view.thread_id, "approve", by="dana")
    assert governed.approve(view.thread_id, "approve", by="sam").status == "waiting"  # now the customer's turn


def test_the_cli_refuses_with_exit_4_and_one_sentence(make_order, policy_file, runner):
    view = refund(runner, make_order(30000), "250.00")
    env = {"DURAKIT_AUTHORITY_FILE": str(policy_file)}
    refused = durakit("approve", view.thread_id, "--decision", "approve", "--by", "dana", env=env)
    assert refused.returncode == 4
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("durakit: dana may not answer")
    assert durakit("approve", view.thread_id, "--decision", "approve", "--by", "sam", env=env).returncode == 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[people\ndana = 1", "not valid TOML"),
        ("[[rules]]\ntemplate = 'refund'\nroles = []", "rules.0.roles"),
        ("[[rules]]\ntemplate = 'refund'\nroles = ['x']\nwhen_above = { amount_cents = 'lots' }", "when_above"),
        ("[[rules]]\ntemplate = 'refund'\nrole = 'x'", "rules.0"),
    ],
)
def test_a_broken_policy_file_is_refused_with_a_sentence(tmp_path, text, problem, make_order, runner):
    path = tmp_path / "authority.toml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match="authority file") as refused:
        Authority.from_file(path)
    assert problem in str(refused.value)
    view = refund(runner, make_order(30000), "250.00")
    done = durakit("approve", view.thread_id, "--decision", "approve", "--by", "sam",
                   env={"DURAKIT_AUTHORITY_FILE": str(path)})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert runner.status(view.thread_id).status == "waiting"


def test_a_missing_or_mistyped_field_asks_for_more_authority_not_less():
    rule = Rule(template="refund", roles=("supervisor",), when_above={"amount_cent": 100})
    assert rule.matches("refund", {"node": "await_approval", "amount_cents": 5})
    assert not Rule(template="refund", roles=("x",), when_above={"amount_cents": 100}).matches(
        "refund", {"amount_cents": 5})
    assert not Rule(template="booking", roles=("x",)).matches("refund", {})
    assert not Rule(template="cancellation-save", question="await_customer", roles=("x",)).matches(
        "cancellation-save", {"node": "await_supervisor"})


@pytest.mark.parametrize(("rule", "problem"), [
    ({"template": "refnud", "roles": ["x"]}, "no template is named 'refnud'"),
    ({"template": "refund", "question": "await_aproval", "roles": ["x"]}, "asks no question at 'await_aproval'"),
])
def test_a_rule_naming_no_real_question_is_refused_not_ignored(tmp_path, rule, problem):
    path = tmp_path / "authority.toml"
    lines = [f"{key} = {value!r}".replace("'", '"') for key, value in rule.items()]
    path.write_text("[[rules]]\n" + "\n".join(lines) + "\n")
    with pytest.raises(InvalidInput, match=problem):
        Authority.from_file(path)
