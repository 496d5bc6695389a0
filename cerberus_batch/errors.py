"""Errors as users see them: one line."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
