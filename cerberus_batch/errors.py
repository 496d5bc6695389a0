"""Errors as users see them: one line.

Every refusal we raise is a `CerberusBatchError`; the subclasses say which input or resource was refused.
It is not a ValueError: Python and every library raise ValueError for a wrong argument, i.e. for a bug,
and an `except ValueError` would show such a bug as the user's mistake. Anything else that escapes is
reported by `failure_line` as a bug, its traceback written to a log. (Pydantic validators still raise
ValueError, as pydantic asks; the cohort loader turns what they say into a `CohortError`.)
"""

from __future__ import annotations

from pathlib import Path


class CerberusBatchError(Exception):
    """An input, setting or resource we refuse; the message says which and why."""


class CohortError(CerberusBatchError):
    """A cohort file we refuse to run; the message has one line per problem, each naming file, line and field."""


class SlideError(CerberusBatchError):
    """A slide or mask that cannot be used; the message starts with the file path."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class CheckpointError(CerberusBatchError):
    """A model directory that cannot be loaded; the message is one line naming the file."""


class RunMismatch(CerberusBatchError):
    """The output folder holds a run made with other settings."""


class OutputError(CerberusBatchError):
    """An output folder we refuse to write: it holds inputs, another run holds it, or we cannot write it."""


class ClusterError(CerberusBatchError):
    """The cohort's cluster could not be started or reached, or needs a package that is not installed."""


class SettingError(CerberusBatchError):
    """A setting given outside a cohort file (a command-line option, a model kind) that we refuse; the message names it."""


BUG = "this is a bug in cerberus-batch"


def is_bug(err: BaseException) -> bool:
    """Whether an error is ours to fix: neither a refusal of ours nor the system's (a file, the disk, the network)."""
    return not isinstance(err, (CerberusBatchError, OSError))


def failure_line(err: BaseException, path: str | Path | None = None) -> str:
    """One line for a failure: its type and message (`path` as `first_line` names it), and for a bug that it
    is one (the caller says where its traceback went)."""
    line = first_line(err, typed=True, path=path)
    return f"{line} ({BUG})" if is_bug(err) else line


def first_line(err: BaseException, *, typed: bool = False, path: str | Path | None = None) -> str:
    """The first line of an error's message, or its type when it has none.

    `typed` puts the error's type in front (for errors not our own, whose type tells what
    failed); `path` also does, and names the file in front unless the message already names it.
    """
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    if path is not None and str(path) in line:
        return line
    if typed or path is not None:
        line = f"{type(err).__name__}: {line}"
    return line if path is None else f"{path}: {line}"
