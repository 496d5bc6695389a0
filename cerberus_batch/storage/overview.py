"""Writing a slide's QC overview (`OutputLayout.overview`)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from cerberus_batch.storage.atomic import atomic_path
from cerberus_batch.storage.layout import OutputLayout


def save_overview(output: str | Path, slide_id: str, picture: Image.Image) -> Path:
    """Write the slide's overview PNG; it appears whole or not at all."""
    target = OutputLayout(output).overview(slide_id)
    with atomic_path(target) as partial:
        picture.save(partial, format="PNG")
    return target
