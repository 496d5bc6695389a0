"""A weights file checked against its own checksums before torch reads it: torch's zip reader skips
the CRCs the archive records, so flipped bytes in a tensor would load as a wrong tensor."""

from __future__ import annotations

import zipfile
from pathlib import Path

from cerberus_batch.errors import CheckpointError, first_line

ZIP_MAGIC = b"PK\x03\x04"  # torch.load reads a file that starts so as a zip archive, any other as a legacy pickle


def verify_weights(path: Path) -> str | None:
    """Refuse a zip checkpoint any of whose members fails its CRC (one read of the file: about 0.05 s for
    the 114 MB released layout in the page cache).

    A file that records no checksums is not refused: such files were valid releases, and weights_only
    loading keeps them from running code. Returns the warning to give once it loads, else None.
    """
    with open(path, "rb") as file:
        legacy = file.read(len(ZIP_MAGIC)) != ZIP_MAGIC
    if legacy:
        return _unverified(path, "a legacy (pre-zip) torch checkpoint")
    try:
        with zipfile.ZipFile(path) as archive:
            # torch saves with CRCs unless `compute_crc32` was switched off, which writes 0 for every member.
            recorded = any(member.CRC for member in archive.infolist() if member.file_size)
            failed = archive.testzip() if recorded else None
    except Exception as err:  # a damaged archive surfaces as whatever zipfile trips over (BadZipFile, EOFError, ...)
        raise CheckpointError(f"{path}: corrupted: unreadable zip archive ({first_line(err, typed=True)})") from None
    if failed is not None:
        raise CheckpointError(f"{path}: corrupted: {failed} fails its CRC check; download the weights again")
    return None if recorded else _unverified(path, "saved without CRCs")


def _unverified(path: Path, what: str) -> str:
    return (
        f"{path}: {what}, so it records no checksums and corruption cannot be detected; "
        "torch.save() it again with a current torch to add them"
    )
