"""Automatic retries of threads that failed on a transient error.

A node's `TRANSIENT_RETRY` covers a blip of seconds. When the cause lasts longer (a model
provider's outage, an outside system down for maintenance) the thread ends `failed`, and
the workers retry it from its checkpoint on a capped, doubling backoff until it gets past
the failing step or the template's limit is reached; `durakit.steps.is_transient` says
what counts as transient. The settings live in one base class every template's settings
class derives from, so each template sets them under its own prefix, e.g.
DURAKIT_REFUND_AUTO_RETRIES=5.
"""

from __future__ import annotations

import random

from pydantic import Field
from pydantic_settings import BaseSettings

# The run kind (and so the event) of a worker's automatic retry.
AUTO_RETRY = "auto_retry"


class TemplateSettings(BaseSettings):
    """What every template's settings share."""

    auto_retries: int = Field(20, ge=0, le=1000)
    """How often workers retry a thread that failed on a transient error before they leave
    it `failed` for a person (0: never). The count starts again once the thread gets past
    the failing step, or a person resumes it."""
    auto_retry_base_seconds: float = Field(30.0, gt=0)
    """The wait before the first automatic retry; it doubles with each retry after it."""
    auto_retry_max_seconds: float = Field(900.0, gt=0)
    """The longest wait between two automatic retries."""

    def auto_retry_delay(self, retry: int) -> float:
        """Seconds to wait before automatic retry number `retry` (1 for the first), with
        jitter, so threads failed by one outage do not all come back in the same second."""
        delay = min(self.auto_retry_max_seconds, self.auto_retry_base_seconds * 2 ** min(retry - 1, 60))
        return min(self.auto_retry_max_seconds, delay * random.uniform(0.9, 1.1))
