"""Hostile and malformed input, generated with hypothesis, against the CLI (its `main`,
in this process, and a sample in real child processes) and the Python API.

Every case must end in exit 2, 3 or 4 (or the matching DurakitError) with one plain
sentence and no traceback, and must write nothing: every table keeps its row count.
DURAKIT_HOSTILE_EXAMPLES sets the examples per property (default 40); the number of
cases tried is printed at the end of the module.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durakit import cli
from durakit.errors import DurakitError
from durakit.graphs import TEMPLATES
from durakit.runner import Runner
from durakit.templates import IDENTIFIER
from durakit.validation import THREAD_ID_PATTERN
from tests.conftest import durakit, future_slot, table_row_counts, unique

EXAMPLES = int(os.environ.get("DURAKIT_HOSTILE_EXAMPLES", "40"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])
TRIED: Counter[str] = Counter()

# Strings that have broken programs before: quotes, SQL, paths, markup, control characters.
NASTY = ["", " ", "'", '"', "a b", "a/b", "../../etc/passwd", "1; DROP TABLE durakit_threads; --", "' OR '1'='1",
         "\x00", "a\x00b", "[/bold]", "[red]x[/red]", "é", "😀", "ORD\n42", "-1", "null", "%s", "{0}", "\\", "\u202e"]
nasty_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=40),
    st.builds(lambda piece, n: piece * n, st.sampled_from(["x", "'", "é", "😀", "; --"]), st.integers(129, 20_000)),
)
bad_identifier = nasty_text.filter(lambda text: not re.fullmatch(IDENTIFIER, text.strip()))
bad_thread_id = nasty_text.filter(lambda text: not THREAD_ID_PATTERN.fullmatch(text))
unknown_thread_id = st.from_regex(r"[a-z0-9][a-z0-9._:@-]{0,40}", fullmatch=True).map(lambda s: f"nope-{s}")
wrong_type = st.one_of(st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
                       st.booleans())
bad_amount = st.one_of(
    st.decimals(max_value=0, allow_nan=False, allow_infinity=False).map(str),
    st.sampled_from(["abc", "NaN", "Infinity", "-Infinity", "1e400", "0.001", "12345678901234.5", "1,00", "", " "]),
    st.integers(max_value=0),
    st.integers(min_value=10**12, max_value=10**40),
    wrong_type,
)
unknown_template = st.one_of(st.sampled_from(NASTY), st.text(max_size=30)).filter(lambda name: name not in TEMPLATES)
# Names are stripped of surrounding whitespace first, so a bad one stays bad after that.
bad_person = st.one_of(
    st.just(""),
    st.text(alphabet=" \t", min_size=1, max_size=5),
    st.text(min_size=101, max_size=300).filter(lambda name: len(name.strip()) > 100),
    st.builds(lambda c: f"da{c}na", st.sampled_from(["\n", "\r", "\x1b", "\x07", "\x00"])),
)
long_note = st.text(min_size=2001, max_size=3000).filter(lambda note: len(note.strip()) > 2000)


def valid_requests() -> dict[str, dict[str, Any]]:
    slot = future_slot(days=9)
    return {
        "refund": {"order_id": "ORD-1", "amount": "25.00", "reason": "arrived broken", "ticket_id": "T-1"},
        "booking": {"customer_id": "c-1", "customer_email": "c@example.com", "service": "repair-visit", "slot": slot},
        "cancellation-save": {"account_id": "ACC-1", "reason": "too expensive"},
        "escalation": {"conversation_id": "CONV-1", "customer_id": "c-1", "customer_email": "c@example.com",
                       "subject": "Checkout broken", "message": "Nobody can pay."},
    }


IDENTIFIER_FIELDS = {"order_id", "ticket_id", "customer_id", "service", "account_id", "conversation_id", "booking_ref",
                     "request_id", "payment_method"}


@st.composite
def invalid_request(draw: st.DrawFn) -> tuple[str, Any]:
    """A template name and a request that template must refuse."""
    template = draw(st.sampled_from(sorted(TEMPLATES)))
    request = dict(valid_requests()[template])
    how = draw(st.sampled_from(["missing", "unknown_field", "wrong_type", "bad_identifier", "bad_amount", "not_object",
                                "nul_text", "too_long_text"]))
    fields = sorted(request)
    if how == "missing":
        required = [name for name, info in TEMPLATES[template].request_model.model_fields.items() if info.is_required()]
        del request[draw(st.sampled_from(required))]
    elif how == "unknown_field":
        request[draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in request))] = draw(nasty_text)
    elif how == "wrong_type":
        request[draw(st.sampled_from(fields))] = draw(wrong_type)
    elif how == "bad_identifier":
        request[draw(st.sampled_from(sorted(IDENTIFIER_FIELDS & set(fields))))] = draw(bad_identifier)
    elif how == "bad_amount" and template == "refund":
        request["amount"] = draw(bad_amount)
    elif how == "not_object":
        return template, draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=20), st.none()))
    elif how == "nul_text":
        field = draw(st.sampled_from(fields))
        request[field] = str(request[field]) + "\x00"
    else:  # too long, or (bad_amount outside refund) a slot that is not a time
        if template == "booking":
            request["slot"] = draw(st.one_of(nasty_text, st.just("2001-01-01T10:00:00Z"), st.just("2999-99-99T10:00:00Z")))
        else:
            field = next(name for name in ("reason", "message", "order_id", "account_id") if name in request)
            request[field] = "x" * draw(st.integers(5001, 50_000))
    return template, request


# The database must not change: every table keeps its row count.

@pytest.fixture(scope="module")
def counter(test_database) -> Iterator[Any]:
    conn = psycopg.connect(test_database.url, autocommit=True)
    yield table_row_counts(conn)
    conn.close()
    total = sum(TRIED.values())
    print(f"\nhostile input: {total} cases tried ({', '.join(f'{k} {v}' for k, v in sorted(TRIED.items()))}), "
          "each refused with exit 2, 3 or 4, one sentence, nothing written", file=sys.__stderr__)


@pytest.fixture(scope="module")
def waiting(runner: Runner) -> str:
    """A refund thread waiting for approval, to aim answers at."""
    order_id = unique("ORD")
    runner.sandbox.add_order(order_id, customer_id=unique("cust"), customer_email=f"{order_id.lower()}@example.com",
                             amount_cents=30000)
    view = runner.run("refund", {"order_id": order_id, "amount": "250.00", "reason": "arrived broken"})
    assert view.status == "waiting"
    return view.thread_id


def invoke(*argv: str) -> tuple[int, str, str]:
    """`durakit ARGV` through the CLI's own entry point, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            cli.main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_refused(codes: set[int], code: int, stderr: str, before: dict[str, int], after: dict[str, int]) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code in codes, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("durakit: ") and lines[0].rstrip().endswith("."), stderr
    assert "Traceback" not in stderr and "Unexpected error" not in stderr, stderr
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after.get(k)}


def assert_api_refused(codes: set[int], call, counter) -> None:
    before = counter()
    with pytest.raises(DurakitError) as refused:
        call()
    message = str(refused.value)
    assert refused.value.exit_code in codes, message
    assert "\n" not in message.strip() and message.rstrip().endswith("."), message
    assert counter() == before


# The CLI

@PROPERTY
@given(case=invalid_request(), as_json=st.booleans())
def test_cli_run_refuses_invalid_requests(counter, case, as_json):
    template, request = case
    TRIED["cli run"] += 1
    before = counter()
    code, _, err = invoke("run", template, "--input", json.dumps(request), *(["--json"] if as_json else []))
    assert_refused({2}, code, err, before, counter())


@PROPERTY
@given(text=st.one_of(st.text(max_size=200), st.sampled_from(["{", "{'a': 1}", "[1,", '{"a": NaN', "\ufeff{}",
                                                               "[" * 50_000 + "]" * 50_000, '{"amount": 1' + "0" * 5000 + "}"])))
def test_cli_run_refuses_text_that_is_not_a_json_object(counter, text):
    TRIED["cli malformed json"] += 1
    before = counter()
    code, _, err = invoke("run", "refund", "--input", text)
    assert_refused({2}, code, err, before, counter())


@PROPERTY
@given(template=unknown_template)
def test_cli_run_refuses_unknown_templates(counter, template):
    TRIED["cli unknown template"] += 1
    before = counter()
    code, _, err = invoke("run", template, "--input", json.dumps(valid_requests()["refund"]))
    assert_refused({2, 3}, code, err, before, counter())  # 2 when it looks like an option


@PROPERTY
@given(command=st.sampled_from(["resume", "approve", "status", "history"]),
       thread_id=st.one_of(bad_thread_id, unknown_thread_id))
def test_cli_refuses_bad_and_unknown_thread_ids(counter, command, thread_id):
    TRIED["cli thread id"] += 1
    before = counter()
    extra = ["--decision", "approve", "--by", "dana"] if command == "approve" else []
    code, _, err = invoke(command, thread_id, *extra)
    assert_refused({2, 3}, code, err, before, counter())
    if THREAD_ID_PATTERN.fullmatch(thread_id):
        assert code == 3


@PROPERTY
@given(decision=nasty_text.filter(lambda d: d not in ("approve", "reject")), by=st.one_of(st.just("dana"), bad_person),
       note=st.one_of(st.none(), long_note))
def test_cli_approve_refuses_answers_not_offered_and_bad_names(counter, waiting, decision, by, note):
    TRIED["cli approve"] += 1
    before = counter()
    code, _, err = invoke("approve", waiting, "--decision", decision, "--by", by, *(["--note", note] if note else []))
    assert_refused({2}, code, err, before, counter())


@PROPERTY
@given(by=bad_person, note=st.one_of(st.none(), long_note))
def test_cli_approve_refuses_a_valid_decision_from_a_bad_name(counter, waiting, by, note):
    TRIED["cli approve"] += 1
    before = counter()
    code, _, err = invoke("approve", waiting, "--decision", "approve", "--by", by, *(["--note", note] if note else []))
    assert_refused({2}, code, err, before, counter())


@PROPERTY
@given(argv=st.one_of(
    st.tuples(st.just("threads"), st.just("--status"), nasty_text.filter(lambda s: s not in ("running", "waiting",
                                                                                              "completed", "failed"))),
    st.tuples(st.just("threads"), st.just("--template"), unknown_template),
    st.lists(nasty_text, min_size=1, max_size=3).filter(
        lambda args: args[0] not in ("run", "resume", "approve", "status", "history", "threads", "pending", "recover",
                                     "templates", "demo", "db", "--help") and not args[0].startswith("-")),
    st.tuples(st.sampled_from(["run", "approve", "resume", "status"])),
    st.tuples(st.just("run"), st.just("refund"), st.just("--input"), st.just("{}"), st.just("--input-file"),
              st.just("x.json")),
))
def test_cli_refuses_bad_usage(counter, argv):
    TRIED["cli usage"] += 1
    before = counter()
    code, _, err = invoke(*argv)
    assert_refused({2, 3}, code, err, before, counter())


# The Python API

@PROPERTY
@given(case=invalid_request())
def test_api_run_refuses_invalid_requests(runner, counter, case):
    TRIED["api run"] += 1
    template, request = case
    assert_api_refused({2}, lambda: runner.run(template, request), counter)


@PROPERTY
@given(template=st.one_of(unknown_template, st.none(), st.integers()),
       request=st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=2), st.text(max_size=50)))
def test_api_run_refuses_unknown_templates_and_non_requests(runner, counter, template, request):
    TRIED["api run"] += 1
    assert_api_refused({2, 3}, lambda: runner.run(template, request), counter)


@PROPERTY
@given(thread_id=st.one_of(bad_thread_id, unknown_thread_id, st.integers(), st.none()),
       method=st.sampled_from(["resume", "status", "history", "approve"]))
def test_api_refuses_bad_and_unknown_thread_ids(runner, counter, thread_id, method):
    TRIED["api thread id"] += 1
    call = getattr(runner, method)
    args = ("approve",) if method == "approve" else ()
    kwargs = {"by": "dana"} if method == "approve" else {}
    assert_api_refused({2, 3}, lambda: call(thread_id, *args, **kwargs), counter)


@PROPERTY
@given(decision=st.one_of(nasty_text, st.integers(), st.none()), by=st.one_of(bad_person, st.integers(), st.none()),
       note=st.one_of(st.none(), long_note, st.just("a\x00b")))
def test_api_approve_refuses_bad_answers(runner, counter, waiting, decision, by, note):
    TRIED["api approve"] += 1
    assert_api_refused({2}, lambda: runner.approve(waiting, decision, by=by, note=note), counter)


# A sample in real processes: what a shell sees, exit status and stderr included.

@pytest.mark.parametrize("argv", [
    ["run", "refund", "--input", '{"order_id": "ORD-1", "amount": ' + "9" * 5000 + ', "reason": "x"}'],
    ["run", "refund", "--input", '{"order_id": "ORD-1; DROP TABLE checkpoints; --", "amount": "1", "reason": "x"}'],
    ["run", "escalation", "--input", json.dumps({"conversation_id": "C-1", "customer_id": "c", "customer_email": "c@x",
                                                 "subject": "[/bold] broken\nBcc: all@example.com", "message": "m"})],
    ["approve", "refund-'; DELETE FROM durakit_threads; --", "--decision", "approve"],
    ["status", "../../etc/passwd"],
    ["threads", "--status", "[/red]"],
    ["run", "--input", "{}"],
])
def test_hostile_commands_in_a_real_process(counter, argv):
    TRIED["real process"] += 1
    before = counter()
    done = durakit(*argv)
    assert_refused({2, 3}, done.returncode, done.stderr, before, counter())


def test_deeply_nested_json_from_a_file_is_refused(counter, tmp_path):
    TRIED["real process"] += 1
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    before = counter()
    done = durakit("run", "refund", "--input-file", str(path))
    assert_refused({2}, done.returncode, done.stderr, before, counter())
