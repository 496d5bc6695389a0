"""Errors as users see them: one line."""


class OutputError(ValueError):
    """An output folder we refuse to write: it holds inputs, another run holds it, or we cannot write it."""


class ClusterError(ValueError):
    """The cohort's cluster could not be started or reached."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
