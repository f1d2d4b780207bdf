"""Who may answer which question: approval authority, as configuration.

A TOML file names people's roles and, per template and question, the roles that may
answer it. `DURAKIT_AUTHORITY_FILE` points at it; without that, durakit reads
`$DURAKIT_HOME/authority.toml` if it exists. Without any file, anyone may answer
anything (fine for trying the kit, not for production).

    [people]
    dana = ["agent"]
    sam = ["agent", "supervisor"]

    [[rules]]                   # refund approvals: an agent or a supervisor ...
    template = "refund"
    roles = ["agent", "supervisor"]

    [[rules]]                   # ... and above 500.00, only a supervisor
    template = "refund"
    question = "await_approval"
    roles = ["supervisor"]
    when_above = { amount_cents = 50000 }

A rule matches a question when its template (and question, the asking node, if given)
match and every `when_above` field of the question's details (a dotted path such as
`offer.value_cents`) is above its limit; a field the question lacks counts as above,
so a mistyped name asks for more authority, not less. A person may answer when they
hold one of the roles of every rule that matches; a question no rule matches is open.

`--by` names the person; durakit does not authenticate it. Put the CLI behind your own
login, or call `Runner.approve` from a service that knows who its user is. A Runner reads
the file once, when it is first asked to approve; a long-lived process sees edits after
a restart.
"""

from __future__ import annotations

import os
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from durakit.errors import (
    InvalidInput,
    NotAuthorized,
)

ENV_VAR = "DURAKIT_AUTHORITY_FILE"


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str = Field(min_length=1)
    question: str | None = None
    roles: tuple[str, ...] = Field(min_length=1)
    when_above: dict[str, Decimal] = Field(default_factory=dict)

    @model_validator(mode="after")
    def names_a_real_question(self) -> Rule:
        """A misspelt template or question would match nothing and leave the question open."""
        from durakit.graphs import TEMPLATES

        template = TEMPLATES.get(self.template)
        if template is None:
            raise ValueError(f"no template is named {self.template!r} (templates: {', '.join(TEMPLATES)})")
        if self.question is not None and self.question not in template.answers:
            raise ValueError(
                f"the {self.template} template asks no question at {self.question!r} "
                f"(it asks at: {', '.join(template.answers)})"
            )
        return self

    def matches(self, template: str, interrupt: dict[str, Any]) -> bool:
        if self.template != template or (self.question is not None and self.question != interrupt.get("node")):
            return False
        return all(exceeds(lookup(interrupt, path), limit) for path, limit in self.when_above.items())

    def describe(self) -> str:
        where = f"{self.template} {self.question}" if self.question else f"any {self.template} question"
        above = "".join(f" with {path} above {limit}" for path, limit in self.when_above.items())
        return f"{where}{above} needs {' or '.join(self.roles)}"


class Authority(BaseModel):
    """People's roles and the rules saying which roles may answer which questions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    people: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    source: str | None = None  # the file it came from, for messages

    @classmethod
    def open_to_all(cls) -> Authority:
        return cls()

    @classmethod
    def from_file(cls, path: Path) -> Authority:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidInput(f"Cannot read the authority file {path} ({exc.strerror or type(exc).__name__}).") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"The authority file {path} is not valid TOML ({exc}).") from None
        try:
            return cls.model_validate({**data, "source": str(path)})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise InvalidInput(f"The authority file {path} is invalid: {where}: {first['msg']}.") from None

    @classmethod
    def from_env(cls, home: Path) -> Authority:
        """The file DURAKIT_AUTHORITY_FILE names, else $DURAKIT_HOME/authority.toml, else open."""
        named = os.environ.get(ENV_VAR)
        if named:
            return cls.from_file(Path(named).expanduser())
        default = home / "authority.toml"
        if default.exists() or default.is_symlink():  # a dangling link is an error, not "no policy"
            return cls.from_file(default)
        return cls.open_to_all()

    def check(self, template: str, interrupt: dict[str, Any], person: str) -> list[str]:
        """The roles under which `person` may answer this question ([] when it is open to
        anyone); raise NotAuthorized if they may not."""
        matching = [rule for rule in self.rules if rule.matches(template, interrupt)]
        held = set(self.people.get(person, ()))
        used: list[str] = []
        for rule in matching:
            granted = [role for role in rule.roles if role in held]
            if not granted:
                raise NotAuthorized(
                    f"{person} may not answer this question: {rule.describe()}"
                    + (f" (roles in {self.source})." if self.source else ".")
                )
            used.extend(role for role in granted if role not in used)
        return used


def lookup(details: dict[str, Any], path: str) -> Any:
    value: Any = details
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def exceeds(value: Any, limit: Decimal) -> bool:
    """value > limit; a missing or non-numeric value counts as above (fail closed)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return True
    try:
        return Decimal(str(value)) > limit
    except ArithmeticError:
        return True
