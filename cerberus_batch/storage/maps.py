"""Which maps a slide's map group holds, independent of where they live.

Every map is an array laid on the processing-resolution output grid (padded up to
whole 144-px cells). Pixel maps are channel-first (c, y, x), as OME-NGFF expects.
How values are stored is `cerberus_batch.quantisation`'s.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping, Sequence

from cerberus_batch.vocabulary import HEAD_MAPS, PER_CLASS, StoredMap


def map_specs(heads: Iterable[str], class_names: Mapping[str, Sequence[str]]) -> list[StoredMap]:
    """The maps a slide group holds for the model heads that ran, in the vocabulary's order, with
    per-class channels counted for the model's classes."""
    ran = set(heads)
    return [
        replace(stored, channels=len(class_names[head])) if stored.channels == PER_CLASS else stored
        for head, maps in HEAD_MAPS.items() if head in ran
        for stored in maps
    ]
