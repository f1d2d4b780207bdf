"""The errors a user can meet, each with the CLI exit code of DESIGN.md's contract.

Every message is one plain sentence that says what is wrong and, where there is one,
what to do about it.
"""

from __future__ import annotations


class DurakitError(Exception):
    """Base of every error durakit reports to a user; `exit_code` is the CLI's."""

    exit_code = 1


class InvalidInput(DurakitError):
    """Bad input or usage; nothing was written."""

    exit_code = 2


class NotFound(DurakitError):
    """An unknown thread or template."""

    exit_code = 3


class Conflict(DurakitError):
    """The thread is not in a state that allows this: not waiting, already answered, busy."""

    exit_code = 4


class ThreadBusy(Conflict):
    """Another process is advancing this thread right now."""


class LeaseLost(Conflict):
    """This process no longer holds the thread: its lock session ended, or another process
    took the thread over (its lease generation moved on). The run must stop writing."""


class DatabaseUnavailable(DurakitError):
    """The database cannot be reached, or its schema is not the one this durakit needs."""

    exit_code = 5


class SchemaBehind(DatabaseUnavailable):
    """The database's schema is older than this durakit."""


class RunFailed(DurakitError):
    """A thread stopped as `failed`; it can be resumed once the cause is fixed."""

    exit_code = 1
