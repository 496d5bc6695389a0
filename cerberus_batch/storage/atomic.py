"""Writes that are whole or absent: a crash never leaves a half-written file behind."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a hidden sibling to write to; it replaces `target` only if the block succeeds.

    Works for files and folders; the sibling lives in the same folder, so the final
    `os.replace` is a rename on one filesystem.
    """
    target = Path(target)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        yield partial
        if partial.is_dir() and target.is_dir():
            shutil.rmtree(target)  # a folder can only be renamed onto a missing or empty one
        os.replace(partial, target)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)


def write_bytes_durably(target: str | Path, data: bytes) -> None:
    """Atomic and fsynced: for records that promise work is done (the resume ledger)."""
    with atomic_path(target) as partial:
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
