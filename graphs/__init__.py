"""The agent templates, by name. Add yours to `MODULES` after copying `refund.py`.

A template module is imported the first time its template is asked for, so a command
that advances one thread loads one graph, and one that only reads the tables loads none.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from durakit.errors import NotFound

if TYPE_CHECKING:
    from durakit.templates import Template

# Template name -> the module whose `TEMPLATE` it is.
MODULES: dict[str, str] = {
    "refund": "durakit.graphs.refund",
    "booking": "durakit.graphs.booking",
    "cancellation-save": "durakit.graphs.cancellation_save",
    "escalation": "durakit.graphs.escalation",
}


class Templates(Mapping[str, "Template"]):
    """The templates by name; each is loaded on first access (iterating yields names only)."""

    def __init__(self, modules: Mapping[str, str]) -> None:
        self._modules = dict(modules)

    def __getitem__(self, name: str) -> Template:
        template = importlib.import_module(self._modules[name]).TEMPLATE
        if template.name != name:
            raise RuntimeError(f"{self._modules[name]} holds template {template.name!r}, listed as {name!r}.")
        return template

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def __contains__(self, name: object) -> bool:
        return name in self._modules  # no import just to ask


TEMPLATES: Mapping[str, Template] = Templates(MODULES)


def check_template_name(name: str) -> str:
    """`name` if a template has it, without loading the template; NotFound otherwise."""
    if name not in MODULES:
        raise NotFound(f"There is no template named {name!r}; `durakit templates` lists them.")
    return name


def get_template(name: str) -> Template:
    return TEMPLATES[check_template_name(name)]
