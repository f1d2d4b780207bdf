"""What the runner needs to know about a template, in one record.

A template module builds its graph with `durakit.template_graph.TemplateGraph` and ends
with a `TEMPLATE = Template(...)` line; `durakit.graphs` lists them by name. Building the
`Template` checks the kit's rules: a graph node added around `TemplateGraph.add_node`, or
an input field without a description, is refused with a sentence naming it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from durakit.errors import InvalidTemplate

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

    from durakit.template_graph import TemplateGraph

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
    builder: TemplateGraph
    initial_state: Callable[[Any], dict[str, Any]]
    summarize: Callable[[dict[str, Any]], dict[str, Any]]

    def __post_init__(self) -> None:
        """Refuse a template that breaks the kit's rules, naming what breaks them."""
        rules = getattr(self.builder, "node_rules", {})
        if unruled := [node for node in self.builder.nodes if node not in rules]:
            raise InvalidTemplate(
                f"Template {self.name!r}: {listing('node', unruled)} bypassed the kit's step wrapper and retry "
                "policy; add each with TemplateGraph.add_node (durakit.template_graph)."
            )
        fields = self.request_model.model_fields
        if undescribed := [name for name, info in fields.items() if not info.description]:
            raise InvalidTemplate(
                f"Template {self.name!r}: no description for {listing('input field', undescribed)} of "
                f"{self.request_model.__name__}; give each one with Field(description=...)."
            )

    @property
    def answers(self) -> dict[str, type[HumanAnswer]]:
        """The answer model of each node that asks a person (as declared with `asks=`), so
        an answer is checked before anything is written."""
        return {node: rules.asks for node, rules in self.builder.node_rules.items() if rules.asks is not None}

    def thread_id_for(self, request: TemplateRequest) -> str:
        return f"{self.name}-{request.business_key()}"


def listing(noun: str, names: list[str]) -> str:
    """("node", ["a"]) -> "node 'a'"; ("node", ["a", "b"]) -> "nodes 'a', 'b'"."""
    return f"{noun}{'' if len(names) == 1 else 's'} {', '.join(repr(name) for name in names)}"
