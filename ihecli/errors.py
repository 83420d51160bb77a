"""Exceptions that carry their exit status (and, where there is one, their wire status).

Every layer raises these; only the CLI turns them into a message and an exit code.
"""
from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Exit codes shared by every command (see README)."""

    OK = 0
    REFUSED = 1  # the peer or the data said no
    USAGE = 2
    PARTIAL = 3  # some sub-operations failed
    UNREACHABLE = 4  # the peer could not be reached


class IheError(Exception):
    """An error with a one-line message for the user."""

    exit_status = ExitStatus.REFUSED

    def __init__(self, message: str, *, exit_status: ExitStatus | None = None):
        super().__init__(message)
        if exit_status is not None:
            self.exit_status = exit_status


class UsageError(IheError):
    exit_status = ExitStatus.USAGE


class ConfigError(UsageError):
    """The profile file is unreadable or wrong; the message names file and line."""


class PeerUnreachable(IheError):
    exit_status = ExitStatus.UNREACHABLE


class DimseFailure(IheError):
    """A DIMSE operation answered with a failure status."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ArchiveError(IheError):
    """The archive refused an operation (bad object, missing instance, ...)."""

    def __init__(self, message: str, status: int = 0xC000):
        super().__init__(message)
        self.status = status
