"""The agent templates, by name. Add yours here after copying `refund.py`."""

from __future__ import annotations

from durakit.errors import NotFound
from durakit.graphs import booking, cancellation_save, escalation, refund
from durakit.templates import Template

TEMPLATES: dict[str, Template] = {
    template.name: template
    for template in (refund.TEMPLATE, booking.TEMPLATE, cancellation_save.TEMPLATE, escalation.TEMPLATE)
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise NotFound(f"There is no template named {name!r}; `durakit templates` lists them.") from None
