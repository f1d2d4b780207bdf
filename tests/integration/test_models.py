"""ModelJudgement against a scripted OpenAI-compatible server (tests.fake_openai); no database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from durakit.domain import Account, Conversation, Order, Usage
from durakit.errors import InvalidInput, MalformedAnswer
from durakit.judgement import RulesJudgement, judgement_from_env
from durakit.models import ModelJudgement
from durakit.steps import is_transient
from tests.fake_openai import FakeOpenAI, Reply, answer, refusal, slow, status, text

ORDER: Order = {
    "order_id": "ORD-7",
    "customer_id": "cust-7",
    "customer_email": "ada@example.com",
    "amount_cents": 30000,
    "currency": "EUR",
    "status": "paid",
    "ordered_at": "2025-03-01T10:00:00Z",
    "refunded_cents": 0,
}
ACCOUNT: Account = {
    "account_id": "ACC-7",
    "customer_id": "cust-7",
    "customer_email": "ada@example.com",
    "plan": "team",
    "monthly_price_cents": 2999,
    "months_active": 14,
    "status": "active",
}
USAGE: Usage = {"days_active": 3, "sessions": 4, "support_tickets": 1}
CONVERSATION: Conversation = {
    "customer_id": "cust-7",
    "subject": "Login broken",
    "message": "I cannot log in since this morning and my team is blocked.",
    "history": ["asked about invoices"],
}

GOOD = {
    "risk": {"risk": "medium", "score": 45, "reasons": ["large share of the order"]},
    "retention": {"percent_off": 20, "months": 3, "rationale": "low recent use"},
    "summary": {"summary": "Customer cannot log in; team blocked.", "priority": "urgent"},
}
BAD_SCHEMA = {
    "risk": {"risk": "extreme", "score": 45, "reasons": []},
    "retention": {"percent_off": 150, "months": 3, "rationale": "generous"},
    "summary": {"summary": "x" * 601, "priority": "urgent"},
}
CALLS: dict[str, Callable[[ModelJudgement], Any]] = {
    "risk": lambda judgement: judgement.assess_refund_risk(ORDER, 25000, "arrived broken"),
    "retention": lambda judgement: judgement.retention_offer(ACCOUNT, USAGE),
    "summary": lambda judgement: judgement.summarize_conversation(CONVERSATION),
}
KINDS = list(CALLS)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def use_model_env(monkeypatch: pytest.MonkeyPatch, server: FakeOpenAI, **extra: str) -> None:
    for name in ("OPENAI_API_BASE", "DURAKIT_MODEL_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**server.env(), **extra}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def judgement(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> ModelJudgement:
    use_model_env(monkeypatch, server)
    return ModelJudgement.from_env("fake-model")


def user_message(request: dict[str, Any]) -> str:
    return next(message["content"] for message in request["messages"] if message["role"] == "user")


def test_risk_answer_becomes_an_assessment_and_the_model_sees_the_facts(judgement, server):
    server.script(answer(GOOD["risk"]))
    assessment = CALLS["risk"](judgement)
    assert assessment == {
        "risk": "medium",
        "score": 45,
        "reasons": ["large share of the order"],
        "assessed_by": "model:fake-model",
    }
    [request] = server.requests
    assert request["model"] == "fake-model"
    assert request["response_format"]["type"] == "json_schema"
    facts = user_message(request)
    assert "ORD-7" in facts and "300.00 EUR" in facts and "250.00 EUR" in facts and "arrived broken" in facts


def test_retention_offer_value_is_computed_from_the_price_not_the_model(judgement, server):
    server.script(answer({**GOOD["retention"], "value_cents": 1}))
    offer = CALLS["retention"](judgement)
    assert offer == {
        "percent_off": 20,
        "months": 3,
        "value_cents": 2999 * 20 * 3 // 100,
        "rationale": "low recent use",
        "offered_by": "model:fake-model",
    }
    assert "team" in user_message(server.requests[0])
    assert len(server.requests) == 1


def test_summary_answer_becomes_a_summary(judgement, server):
    server.script(answer(GOOD["summary"]))
    summary = CALLS["summary"](judgement)
    assert summary == {
        "summary": "Customer cannot log in; team blocked.",
        "priority": "urgent",
        "summarized_by": "model:fake-model",
    }
    assert "I cannot log in since this morning" in user_message(server.requests[0])
    assert len(server.requests) == 1


def assert_malformed(judgement: ModelJudgement, server: FakeOpenAI, kind: str, reply: Reply) -> MalformedAnswer:
    server.script(reply)
    with pytest.raises(MalformedAnswer) as caught:
        CALLS[kind](judgement)
    reason = str(caught.value)
    assert "\n" not in reason and "model:fake-model" in reason
    assert not is_transient(caught.value)  # retrying the same question would not fix the answer
    assert len(server.requests) == 1
    return caught.value


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_json_is_a_malformed_answer(judgement, server, kind):
    error = assert_malformed(judgement, server, kind, text('{"risk": "low", "score": '))
    assert "Invalid JSON" in str(error)


@pytest.mark.parametrize("kind", KINDS)
def test_answer_outside_the_schema_is_a_malformed_answer(judgement, server, kind):
    error = assert_malformed(judgement, server, kind, answer(BAD_SCHEMA[kind]))
    assert next(iter(BAD_SCHEMA[kind])) in str(error)  # names the offending field


def test_a_refusal_is_a_malformed_answer(judgement, server):
    error = assert_malformed(judgement, server, "risk", refusal("I can't help with that."))
    assert "refused: I can't help with that." in str(error)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("code", "error_type"), [(429, openai.RateLimitError), (500, openai.InternalServerError)], ids=["429", "500"]
)
def test_server_errors_propagate_as_transient_openai_errors_after_one_request(
    judgement, server, kind, code, error_type
):
    server.script(status(code), answer(GOOD[kind]))
    with pytest.raises(error_type) as caught:
        CALLS[kind](judgement)
    assert is_transient(caught.value)
    assert len(server.requests) == 1  # the client did not retry on its own
    assert "model:fake-model" in CALLS[kind](judgement).values()  # as LangGraph's retry would


def test_refused_connection_is_a_transient_connection_error(monkeypatch):
    with FakeOpenAI() as server:
        use_model_env(monkeypatch, server)
    judgement = ModelJudgement.from_env("fake-model")  # the server is gone: its port refuses
    with pytest.raises(openai.APIConnectionError) as caught:
        CALLS["risk"](judgement)
    assert is_transient(caught.value)


def test_slow_model_times_out_as_a_transient_error(server, monkeypatch):
    use_model_env(monkeypatch, server, DURAKIT_MODEL_TIMEOUT="0.2")
    server.script(slow(answer(GOOD["risk"]), 5))
    with pytest.raises(openai.APITimeoutError) as caught:
        CALLS["risk"](ModelJudgement.from_env("fake-model"))
    assert is_transient(caught.value)
    assert len(server.requests) == 1


def test_without_durakit_model_the_rules_judge(monkeypatch):
    monkeypatch.delenv("DURAKIT_MODEL", raising=False)
    assert isinstance(judgement_from_env(), RulesJudgement)
    monkeypatch.setenv("DURAKIT_MODEL", "rules")
    assert isinstance(judgement_from_env(), RulesJudgement)


def test_durakit_model_selects_the_model_at_openai_base_url(server, monkeypatch):
    use_model_env(monkeypatch, server)
    judgement = judgement_from_env()
    assert isinstance(judgement, ModelJudgement)
    server.script(answer(GOOD["summary"]))
    assert judgement.summarize_conversation(CONVERSATION)["summarized_by"] == "model:fake-model"
    assert len(server.requests) == 1


def test_durakit_model_without_an_api_key_is_invalid_input(monkeypatch):
    monkeypatch.setenv("DURAKIT_MODEL", "fake-model")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(InvalidInput, match="OPENAI_API_KEY"):
        judgement_from_env()


def test_a_timeout_that_is_not_a_number_is_invalid_input(server, monkeypatch):
    use_model_env(monkeypatch, server, DURAKIT_MODEL_TIMEOUT="soon")
    with pytest.raises(InvalidInput, match="DURAKIT_MODEL_TIMEOUT"):
        judgement_from_env()
