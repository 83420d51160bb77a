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


def reason(e: BaseException) -> str:
    """Why a connection failed, in words: a host name that is not found, a refused connection, a
    timeout, or the system's text (without the [Errno N] that Python puts in front of it)."""
    import socket

    if isinstance(e, socket.gaierror):
        if e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return "host name not found"
        return f"host name not found ({e.strerror or e})"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "no answer in time"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[:1].lower() + e.strerror[1:]
    return str(e) or type(e).__name__
