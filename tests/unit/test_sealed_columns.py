"""Sealing and opening through the declared columns (`durakit.encryption.SEALED_COLUMNS`),
without a database: the stored form and its binding are the ones a column-name string gave
before, so databases encrypted earlier read back; and no store seals by name on its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from durakit.encryption import (
    ALLOW_PLAINTEXT_ENV,
    DECISION_NOTE,
    EFFECT_REQUEST,
    EVENT_DETAIL,
    KEY_ENV,
    PREVIOUS_KEYS_ENV,
    THREAD_REQUEST,
    generate_key,
    open_json,
    open_text,
    seal_json,
    seal_text,
)
from durakit.errors import CannotDecrypt

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


@pytest.fixture(autouse=True)
def key(monkeypatch):
    for name in (PREVIOUS_KEYS_ENV, ALLOW_PLAINTEXT_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(KEY_ENV, generate_key())


def test_a_declared_column_binds_exactly_what_its_name_and_row_bound_before():
    request = {"email": "ada@example.com"}
    assert open_json(EFFECT_REQUEST.seal(request, "T-1", "notify"), "durakit_effects.request", "T-1", "notify") == request
    assert EFFECT_REQUEST.open(seal_json(request, "durakit_effects.request", "T-1", "notify"), "T-1", "notify") == request
    note = DECISION_NOTE.seal("call me", "T-1", "i-1")
    assert note.startswith("durakit_encrypted:v1:") and open_text(note, "durakit_decisions.note", "T-1", "i-1") == "call me"
    assert DECISION_NOTE.open(seal_text("call me", "durakit_decisions.note", "T-1", "i-1"), "T-1", "i-1") == "call me"


def test_a_value_does_not_open_in_another_row_or_column():
    sealed = THREAD_REQUEST.seal({"a": 1}, "T-1")
    with pytest.raises(CannotDecrypt):
        THREAD_REQUEST.open(sealed, "T-2")
    with pytest.raises(CannotDecrypt):
        open_json(sealed, "durakit_threads.result", "T-1")


def test_an_event_without_detail_stays_empty_and_a_missing_node_binds_as_empty():
    assert EVENT_DETAIL.seal({}, "T-1", "completed", None) == {}
    assert EVENT_DETAIL.open({}, "T-1", "completed", None) == {}
    sealed = EVENT_DETAIL.seal({"error": "boom"}, "T-1", "failed", None)
    assert open_json(sealed, "durakit_events.detail", "T-1", "failed", "") == {"error": "boom"}


def test_a_call_with_the_wrong_row_parts_is_a_programming_error():
    with pytest.raises(TypeError, match="thread_id, step_key"):
        EFFECT_REQUEST.seal({"a": 1}, "T-1")


def test_only_the_declared_columns_seal_and_open():
    by_name = re.compile(r"\b(seal|open)_(json|text)\(")
    callers = [path.name for path in RUNTIME.rglob("*.py") if path.name != "encryption.py" and by_name.search(path.read_text())]
    assert callers == [], "seal and open through a column of SEALED_COLUMNS, so that `db rewrap` knows it"
