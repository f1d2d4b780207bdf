"""Checks of what a caller hands durakit, before anything is read or written: thread,
checkpoint and question ids, a page of a listing, a template's request, a person's answer.
Each failure is an InvalidInput with one sentence (exit 2)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from durakit.errors import InvalidInput

if TYPE_CHECKING:
    from durakit.templates import Template, TemplateRequest

# Thread ids reach SQL, URLs, logs and idempotency keys: keep them to a safe alphabet.
THREAD_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
CHECKPOINT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")  # LangGraph's are UUIDs
# A template's question ids ("approval:2") and LangGraph's interrupt ids (32 hex digits).
QUESTION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

# A listing shows PAGE_SIZE threads unless asked for up to MAX_PAGE_SIZE; more are paged.
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_OFFSET = 1_000_000_000


def check_thread_id(thread_id: str) -> str:
    if not isinstance(thread_id, str) or not THREAD_ID_PATTERN.fullmatch(thread_id):
        raise InvalidInput(
            f"{thread_id!r} is not a valid thread id: use 1 to 128 letters, digits and . _ : @ -, "
            "starting with a letter or digit."
        )
    return thread_id


def check_checkpoint_id(checkpoint_id: str, thread_id: str) -> str:
    if not CHECKPOINT_ID_PATTERN.fullmatch(checkpoint_id):
        raise InvalidInput(f"{checkpoint_id[:80]!r} is not a checkpoint id; `durakit history {thread_id}` lists them.")
    return checkpoint_id


def check_question_id(question: str) -> str:
    if not isinstance(question, str) or not QUESTION_ID_PATTERN.fullmatch(question):
        raise InvalidInput(
            f"{str(question)[:80]!r} is not a question id; `durakit pending` and `durakit status` show each question's."
        )
    return question


def check_page(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"--limit takes a number of threads from 1 to {MAX_PAGE_SIZE:,}, not {limit!r}.")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"--offset takes a number of threads to skip from 0 to {MAX_OFFSET:,}, not {offset!r}.")


def check_prune(keep: int | None, older_than: timedelta | None) -> None:
    if keep is None and older_than is None:
        raise InvalidInput("Say what to prune: --keep N, --older-than AGE, or both.")
    if keep is not None and not 1 <= keep <= 1_000_000:
        raise InvalidInput("--keep takes a number from 1 (the latest checkpoint is the thread's state) to 1000000.")
    if older_than is not None and older_than <= timedelta(0):
        raise InvalidInput("--older-than must be a positive age, such as 30d or 12h.")


def parse_request(template: Template, raw: str | Mapping[str, Any]) -> TemplateRequest:
    """Validate a template's input (a JSON text or a mapping) before anything is written."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"The input is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}).") from None
        except RecursionError:
            raise InvalidInput("The input is not a usable JSON object (it is nested too deeply).") from None
        except ValueError:  # an integer of more than 4,300 digits
            raise InvalidInput("The input is not a usable JSON object (it holds a number too long to read).") from None
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"The input must be a JSON object with the {template.name} template's fields.")
    try:
        return template.request_model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"Invalid {template.name} input: {describe_validation_error(exc)}.") from None


def check_answer(template: Template, node: str | None, answer: dict[str, Any]) -> dict[str, Any]:
    """Validate a person's answer with the asking node's answer model, before it is recorded."""
    model = template.answers.get(node or "")
    if model is None:
        return answer
    try:
        return model.model_validate(answer).model_dump(mode="json")
    except ValidationError as exc:
        raise InvalidInput(f"The answer was refused: {describe_validation_error(exc)}.") from None


def field_name(part: str | int) -> str:
    """A field name for a message; one the input made up is quoted, shortened and escaped."""
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_]{1,64}", text) else repr(text[:40])


def describe_validation_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(field_name(part) for part in first["loc"]) or "input"
    text = f"{where}: {first['msg']}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text
