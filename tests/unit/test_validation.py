"""Pure functions: no database needed."""

from __future__ import annotations

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from durakit import faults
from durakit.db import is_connection_lost, redact
from durakit.errors import InvalidInput, NotFound, TransientAdapterError
from durakit.graphs import TEMPLATES, get_template
from durakit.judgement import RulesJudgement
from durakit.settings import KitSettings
from durakit.state.refund import RefundSettings, initial_state
from durakit.steps import is_transient
from durakit.validation import check_thread_id, parse_request

REFUND = get_template("refund")


def order(amount_cents: int = 30000, refunded_cents: int = 0) -> dict:
    return {
        "order_id": "ORD-1", "customer_id": "c", "customer_email": "c@example.com", "amount_cents": amount_cents,
        "currency": "EUR", "status": "paid", "ordered_at": "2026-11-20T00:00:00Z", "refunded_cents": refunded_cents,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", None), ("issue_refund:before", ("issue_refund", "before", "kill")),
     ("__start__:before", ("__start__", "before", "kill")),
     ("sync_crm:after_effect", ("sync_crm", "after_effect", "kill")),
     ("check_eligibility:after_writes:stop", ("check_eligibility", "after_writes", "stop"))],
)
def test_fault_setting_is_parsed(monkeypatch, value, expected):
    monkeypatch.setenv("DURAKIT_FAULT", value)
    assert faults.configured() == expected


@pytest.mark.parametrize("value", ["issue_refund", "issue_refund:during", ":before", "issue_refund:stop"])
def test_malformed_fault_setting_is_refused(monkeypatch, value):
    monkeypatch.setenv("DURAKIT_FAULT", value)
    with pytest.raises(InvalidInput, match="NODE:POINT"):
        faults.configured()


def test_thread_ids():
    assert check_thread_id("refund-T-1001") == "refund-T-1001"
    for bad in ("", " x", "x;drop", "a" * 129, "../etc", "x\x00y", "abc\n"):
        with pytest.raises(InvalidInput):
            check_thread_id(bad)


def test_templates_are_found_by_name_and_unknown_names_refused():
    assert [template.name for template in TEMPLATES.values()] == list(TEMPLATES)
    assert "nope" not in TEMPLATES and TEMPLATES.get("nope") is None
    with pytest.raises(NotFound, match="durakit templates"):
        get_template("nope")


def test_request_amounts_become_exact_cents():
    request = parse_request(REFUND, '{"order_id": "ORD-1", "amount": 19.9, "reason": " late "}')
    state = initial_state(request)
    assert state["amount_cents"] == 1990
    assert state["reason"] == "late"
    assert REFUND.thread_id_for(request) == "refund-ORD-1"
    with_ticket = parse_request(REFUND, {"order_id": "ORD-1", "amount": "5", "reason": "x", "ticket_id": "T-9"})
    assert REFUND.thread_id_for(with_ticket) == "refund-T-9"


def test_validation_message_is_one_sentence_naming_the_field():
    with pytest.raises(InvalidInput) as caught:
        parse_request(REFUND, {"order_id": "ORD-1", "amount": "abc"})
    message = str(caught.value)
    assert message.startswith("Invalid refund input: amount:")
    assert "(and 1 more problem)" in message
    assert "\n" not in message


def test_rules_risk():
    rules = RulesJudgement()
    assert rules.assess_refund_risk(order(), 1000, "late")["risk"] == "low"
    assert rules.assess_refund_risk(order(), 20000, "late")["risk"] == "medium"
    high = rules.assess_refund_risk(order(refunded_cents=100), 20000, "I will file a chargeback")
    assert high["risk"] == "high" and len(high["reasons"]) == 3


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DURAKIT_REFUND_AUTO_APPROVE_LIMIT", "250")
    assert str(RefundSettings().auto_approve_limit) == "250"
    monkeypatch.delenv("DURAKIT_DATABASE_URL", raising=False)
    monkeypatch.setenv("DURAKIT_HOME", str(tmp_path))
    settings = KitSettings.from_env()
    assert settings.database_url is None and settings.home == tmp_path


def test_transient_errors_are_named_in_one_place():
    assert is_transient(TransientAdapterError("503"))
    assert is_transient(psycopg.errors.DeadlockDetected("deadlock detected"))
    assert is_transient(psycopg.errors.QueryCanceled("statement timeout"))
    assert not is_transient(ValueError("bad"))
    assert not is_transient(psycopg.errors.CheckViolation("no"))


def test_a_lost_connection_is_left_to_the_runner_not_retried_in_the_step():
    for lost in (psycopg.OperationalError("server closed the connection unexpectedly"),
                 psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
                 PoolTimeout("couldn't get a connection after 10.00 sec")):
        assert is_connection_lost(lost) and not is_transient(lost)
    assert not is_connection_lost(psycopg.errors.DeadlockDetected("deadlock detected"))


def test_passwords_are_not_shown():
    assert redact("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
