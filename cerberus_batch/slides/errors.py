"""The one error type slide handling raises."""

from __future__ import annotations

from pathlib import Path


class SlideError(ValueError):
    """A slide or mask that cannot be used; the message starts with the file path."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")
