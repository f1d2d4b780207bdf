"""Keys and the checkpoint serializer of `durakit.encryption`, without a database."""

from __future__ import annotations

import base64

import pytest
from langgraph.checkpoint.base import _with_msgpack_allowlist
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from durakit.encryption import (
    ALLOW_PLAINTEXT_ENV,
    KEY_ENV,
    PREVIOUS_KEYS_ENV,
    AesGcmCipher,
    checkpoint_serializer_from_env,
    generate_key,
    open_json,
    open_text,
    parse_key,
    seal_json,
    seal_text,
)
from durakit.errors import CannotDecrypt, EncryptionKeyInvalid, InvalidInput

RAW = bytes(range(32))


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    for name in (KEY_ENV, PREVIOUS_KEYS_ENV, ALLOW_PLAINTEXT_ENV):
        monkeypatch.delenv(name, raising=False)


def test_a_key_is_32_bytes_as_base64_or_hex():
    written = [
        base64.b64encode(RAW).decode(),
        base64.urlsafe_b64encode(RAW).decode(),
        base64.urlsafe_b64encode(RAW).decode().rstrip("="),
        RAW.hex(),
        RAW.hex().upper(),
        f"  {RAW.hex()}\n",
    ]
    assert {parse_key(text) for text in written} == {RAW}
    generated = generate_key()
    assert len(generated) == 44 and len(parse_key(generated)) == 32 and generate_key() != generated


@pytest.mark.parametrize(
    "bad",
    ["", "secret", "00" * 32, "a" * 44, RAW.hex()[:-2], RAW.hex() + "00", base64.b64encode(RAW[:31]).decode(),
     base64.b64encode(RAW + b"x").decode(), "g" * 64, base64.b64encode(RAW).decode()[:-2] + "!="],
)
def test_a_malformed_key_is_refused_in_one_sentence_without_echoing_it(bad):
    with pytest.raises(EncryptionKeyInvalid) as refused:
        parse_key(bad)
    message = str(refused.value)
    assert message.startswith(KEY_ENV) and message.endswith(".") and "\n" not in message
    assert not bad.strip() or bad not in message
    assert refused.value.exit_code == 2


def test_no_key_means_no_encryption(monkeypatch):
    assert checkpoint_serializer_from_env() is None
    assert seal_json({"a": 1}, "t.c", "T") == {"a": 1} and seal_text("x", "t.c", "T") == "x"
    monkeypatch.setenv(ALLOW_PLAINTEXT_ENV, "maybe")
    monkeypatch.setenv(KEY_ENV, generate_key())
    with pytest.raises(InvalidInput, match=f"{ALLOW_PLAINTEXT_ENV} must be 1 or 0"):
        checkpoint_serializer_from_env()


def test_without_a_key_a_value_that_looks_encrypted_reads_back_as_written():
    for note in ("durakit_encrypted:v1:AAAA", "durakit_plain:x", "durakit_plain:durakit_encrypted:y", "plain"):
        assert open_text(seal_text(note, "t.c", "T"), "t.c", "T") == note
    for value in ({"durakit_encrypted": "v1:AAAA"}, {"durakit_plain": 1}, {"durakit_encrypted": 1}, [1], None):
        assert open_json(seal_json(value, "t.c", "T"), "t.c", "T") == value


def test_columns_are_bound_to_their_row(monkeypatch):
    monkeypatch.setenv(KEY_ENV, generate_key())
    sealed = seal_json({"email": "ada@example.com"}, "durakit_effects.request", "T-1", "notify")
    assert "ada" not in str(sealed) and set(sealed) == {"durakit_encrypted"}
    assert open_json(sealed, "durakit_effects.request", "T-1", "notify") == {"email": "ada@example.com"}
    for elsewhere in (("durakit_effects.request", "T-2", "notify"), ("durakit_effects.request", "T-1", "sync"),
                      ("durakit_effects.result", "T-1", "notify")):
        with pytest.raises(CannotDecrypt, match="altered, or copied from another row"):
            open_json(sealed, *elsewhere)
    note = seal_text("call me", "durakit_decisions.note", "T-1", "i-1")
    assert note.startswith("durakit_encrypted:v1:") and open_text(note, "durakit_decisions.note", "T-1", "i-1") == "call me"
    assert seal_json(None, "t.c", "T") is None and open_json(None, "t.c", "T") is None


def test_the_checkpoint_serializer_round_trips_and_reads_like_langgraphs(monkeypatch):
    monkeypatch.setenv(KEY_ENV, generate_key())
    serde = checkpoint_serializer_from_env()
    value = {"email": "ada@example.com", "amount_cents": 25000, "tags": ["a", "b"]}
    type_, blob = serde.dumps_typed(value)
    assert type_ == "msgpack+aesgcm" and b"ada@example.com" not in blob
    assert serde.loads_typed((type_, blob)) == value
    assert serde.loads_typed(serde.dumps_typed(None)) is None and serde.loads_typed(serde.dumps_typed("x")) == "x"
    # LangGraph's own EncryptedSerializer with durakit's cipher reads and writes the same blobs.
    stock = EncryptedSerializer(AesGcmCipher(serde.keyring))
    assert stock.loads_typed((type_, blob)) == value
    assert serde.loads_typed(stock.dumps_typed(value)) == value


def test_the_checkpoint_serializer_refuses_plaintext_and_foreign_or_damaged_blobs(monkeypatch):
    monkeypatch.setenv(KEY_ENV, generate_key())
    serde = checkpoint_serializer_from_env()
    plaintext = JsonPlusSerializer().dumps_typed({"injected": True})
    with pytest.raises(CannotDecrypt, match=f"stored without encryption.*{ALLOW_PLAINTEXT_ENV}=1"):
        serde.loads_typed(plaintext)
    type_, blob = serde.dumps_typed({"a": 1})
    damaged = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(CannotDecrypt, match="altered"):
        serde.loads_typed((type_, damaged))
    with pytest.raises(CannotDecrypt, match="altered"):
        serde.loads_typed(("msgpack+aes", blob))  # pycryptodome's tag: another program's blob
    monkeypatch.setenv(KEY_ENV, generate_key())
    with pytest.raises(CannotDecrypt, match="cannot be decrypted with DURAKIT_ENCRYPTION_KEY: it was written with"):
        checkpoint_serializer_from_env().loads_typed((type_, blob))
    monkeypatch.setenv(ALLOW_PLAINTEXT_ENV, "1")
    assert checkpoint_serializer_from_env().loads_typed(plaintext) == {"injected": True}


def test_langgraphs_strict_msgpack_allowlist_keeps_the_plaintext_refusal(monkeypatch):
    """LangGraph applies its allowlist by rebuilding the serializer; a subclass of its
    EncryptedSerializer comes back as a plain EncryptedSerializer, this one as itself."""
    monkeypatch.setenv(KEY_ENV, generate_key())
    serde = checkpoint_serializer_from_env(allowed_msgpack_modules=None)
    narrowed = _with_msgpack_allowlist(serde, [("some.module", "Model")])
    assert narrowed is not serde and type(narrowed) is type(serde)
    assert narrowed.loads_typed(serde.dumps_typed([1, 2])) == [1, 2]
    with pytest.raises(CannotDecrypt, match="stored without encryption"):
        narrowed.loads_typed(JsonPlusSerializer().dumps_typed([1, 2]))


def test_previous_keys_read_and_need_a_current_key(monkeypatch):
    old = generate_key()
    monkeypatch.setenv(KEY_ENV, old)
    sealed = seal_json({"a": 1}, "t.c", "T")
    monkeypatch.setenv(KEY_ENV, generate_key())
    with pytest.raises(CannotDecrypt, match="written with another key"):
        open_json(sealed, "t.c", "T")
    monkeypatch.setenv(PREVIOUS_KEYS_ENV, f"{generate_key()}, {old}")
    assert open_json(sealed, "t.c", "T") == {"a": 1}
    monkeypatch.setenv(PREVIOUS_KEYS_ENV, f"{old},oops")
    with pytest.raises(EncryptionKeyInvalid, match=r"DURAKIT_ENCRYPTION_PREVIOUS_KEYS \(key 2\) is not a usable key"):
        open_json(sealed, "t.c", "T")
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv(PREVIOUS_KEYS_ENV, old)
    with pytest.raises(EncryptionKeyInvalid, match="is set without DURAKIT_ENCRYPTION_KEY"):
        seal_json({"a": 1}, "t.c", "T")
