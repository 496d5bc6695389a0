"""Errors as users see them: one line.

Every refusal we raise is a `CerberusBatchError`, itself a ValueError so callers that catch
ValueError keep working; the subclasses say which input or resource was refused.
"""

from __future__ import annotations

from pathlib import Path


class CerberusBatchError(ValueError):
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
    """The cohort's cluster could not be started or reached."""


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
