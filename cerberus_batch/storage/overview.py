"""Where a slide's QC overview lives, `<output>/tables/overview/<slide_id>.png`, and writing it."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from cerberus_batch.storage.atomic import atomic_path, make_dirs
from cerberus_batch.storage.tables import table_dir


def overview_path(output: str | Path, slide_id: str) -> Path:
    return table_dir(output, "overview") / f"{slide_id}.png"


def save_overview(output: str | Path, slide_id: str, picture: Image.Image) -> Path:
    """Write the slide's overview PNG; it appears whole or not at all."""
    target = overview_path(output, slide_id)
    make_dirs(target.parent)
    with atomic_path(target) as partial:
        picture.save(partial, format="PNG")
    return target
