"""The errors a user can meet, each with the CLI exit code of DESIGN.md's contract.

Every message is one plain sentence that says what is wrong and, where there is one,
what to do about it.
"""

from __future__ import annotations


def describe_error(exc: BaseException) -> str:
    """An error as the registry and the event log keep it: its type and first line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else type(exc).__name__}"[:1000]


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


class InvalidTemplate(DurakitError):
    """A template breaks one of the kit's rules (a node added around the kit's graph
    builder, an input field without a description); its module is refused when loaded."""

    exit_code = 1


# Raised inside the kit's layers; a user meets them through the ones above.


class NotAuthorized(Conflict):
    """The person answering lacks the authority the question needs."""


class LedgerMismatch(Exception):
    """A step ran again with a different request than the one recorded: refusing to act."""


class EncryptionKeyInvalid(InvalidInput):
    """DURAKIT_ENCRYPTION_KEY (or a previous key) is not a usable key."""


class CannotDecrypt(DurakitError):
    """Stored data cannot be read with the configured key: another key wrote it, it was
    altered or moved, it is encrypted and no key is set, or it is plaintext and refused."""

    exit_code = 2  # a configuration problem, like a malformed key; nothing was written


class MalformedAnswer(Exception):
    """The model answered, but not with something the schema allows."""


class TransientAdapterError(Exception):
    """The outside system failed in a way that may pass (timeout, 503): retry later."""


class IdempotencyKeyReused(Exception):
    """The same idempotency key came with a different request body."""


class CheckpointNotFound(LookupError):
    """`copy_thread(..., until=ID)` named a checkpoint the source thread does not have."""


class HistoryNeeded(ValueError):
    """`keep_latest` was asked to cut the history of a thread that uses a DeltaChannel."""
