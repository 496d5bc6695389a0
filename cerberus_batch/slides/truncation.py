"""Whether a TIFF file ends before its own directories: an interrupted copy, named as such by every reader.

tifffile finds no pages in it (an IndexError deep in tiffslide) and OpenSlide calls it an unsupported
format; the header's chain of directory offsets says what happened.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

MOST_DIRECTORIES = 100_000  # a chain longer than any slide's pyramid loops


def tiff_truncation(file: BinaryIO, size: int) -> str | None:
    """"file is truncated (...)" where a directory of the TIFF in `file` (`size` bytes) lies past its end, else None."""
    file.seek(0)
    header = file.read(16)
    order = {b"II": "<", b"MM": ">"}.get(header[:2])
    if order is None or len(header) < 8:
        return None
    big = struct.unpack(order + "H", header[2:4])[0] == 43  # BigTIFF: 8-byte offsets and counts
    offset_format, count_format, entry = (order + "Q", order + "Q", 20) if big else (order + "I", order + "H", 12)
    offset = struct.unpack(offset_format, header[8:16] if big else header[4:8])[0]
    for _ in range(MOST_DIRECTORIES):
        if offset == 0:
            return None
        count_bytes = struct.calcsize(count_format)
        if offset + count_bytes > size:
            return f"file is truncated (a directory starts at byte {offset:,}, the file has {size:,})"
        file.seek(offset)
        (count,) = struct.unpack(count_format, file.read(count_bytes))
        end = offset + count_bytes + count * entry + struct.calcsize(offset_format)
        if end > size:
            return f"file is truncated (a directory ends at byte {end:,}, the file has {size:,})"
        file.seek(end - struct.calcsize(offset_format))
        (offset,) = struct.unpack(offset_format, file.read(struct.calcsize(offset_format)))
    return None
