"""durakit: durable customer-support agents, as LangGraph workflows on PostgreSQL.

The Python API is `durakit.Runner` (see `durakit.runner`); the CLI is `durakit --help`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Runner", "Status", "ThreadView", "__version__"]

if TYPE_CHECKING:
    from durakit.record import Status
    from durakit.runner import Runner
    from durakit.views import ThreadView


def __getattr__(name: str) -> Any:
    # Imported on first use, so `durakit --help` does not pay for LangGraph.
    if name == "Runner":
        from durakit.runner import Runner

        return Runner
    if name == "ThreadView":
        from durakit.views import ThreadView

        return ThreadView
    if name == "Status":
        from durakit.record import Status

        return Status
    raise AttributeError(f"module 'durakit' has no attribute {name!r}")
