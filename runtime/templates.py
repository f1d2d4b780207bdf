"""What the runner needs to know about a template, in one record.

A template module builds its `StateGraph` and ends with a `TEMPLATE = Template(...)`
line; `durakit.graphs` lists them by name.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from langgraph.graph import StateGraph
    from pydantic_settings import BaseSettings

IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # order, ticket and customer ids


def no_nul_characters(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL characters")  # PostgreSQL text cannot hold them
    return value


class TemplateRequest(BaseModel):
    """Base of every template's input: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    _no_nul = field_validator("*", mode="after")(no_nul_characters)

    def business_key(self) -> str:
        """What makes two requests the same request (the thread id is derived from it)."""
        raise NotImplementedError


class HumanAnswer(BaseModel):
    """What `durakit approve` sends a waiting node: the decision, who gave it, and a note.
    A template's answer model derives from this and narrows `decision`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    decision: str = Field(min_length=1, max_length=100)
    by: str = Field(min_length=1, max_length=100)
    note: str | None = Field(None, max_length=2000)

    _no_nul = field_validator("*", mode="after")(no_nul_characters)

    @field_validator("by")
    @classmethod
    def one_visible_line(cls, name: str) -> str:
        """A name as the audit trail shows it: no control characters, and no invisible
        format characters (right-to-left overrides, zero-width joiners) that disguise it."""
        if any(unicodedata.category(char) in ("Cc", "Cf") for char in name):
            raise ValueError("must be one line of visible characters")
        return name


def money(cents: int, currency: str = "") -> str:
    """12345 -> "123.45" (or "123.45 EUR"): amounts are integer cents everywhere else."""
    text = f"{Decimal(cents) / 100:.2f}"
    return f"{text} {currency}" if currency else text


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    request_model: type[TemplateRequest]
    settings_model: type[BaseSettings]
    builder: StateGraph
    initial_state: Callable[[Any], dict[str, Any]]
    summarize: Callable[[dict[str, Any]], dict[str, Any]]
    answers: dict[str, type[BaseModel]] = field(default_factory=dict)
    """The answer model of each node that asks a person, so an answer is checked before
    anything is written."""

    def thread_id_for(self, request: TemplateRequest) -> str:
        return f"{self.name}-{request.business_key()}"
