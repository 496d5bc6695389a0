"""Writing a slide's QC picture (`OutputLayout.overview`) and its preview for the cohort report."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from cerberus_batch.storage.atomic import atomic_path
from cerberus_batch.storage.layout import OutputLayout

PREVIEW_WIDTH = 960  # px: the QC picture as the cohort report shows it (a click opens the PNG)
PREVIEW_QUALITY = 80
PNG_EFFORT = 1  # zlib level: a third faster than the default 6 on a QC picture, for about 9% more bytes


def save_overview(output: str | Path, slide_id: str, picture: Image.Image) -> Path:
    """Write the slide's QC picture (PNG) and its JPEG preview, each whole or not at all.

    The preview is made here, on the worker that drew the picture: the report that embeds every
    slide's preview is rewritten often, and must not decode a PNG per slide each time.
    """
    layout = OutputLayout(output)
    preview = picture.convert("RGB")
    preview.thumbnail((PREVIEW_WIDTH, PREVIEW_WIDTH * 4))
    with atomic_path(layout.overview_preview(slide_id)) as partial:
        preview.save(partial, format="JPEG", quality=PREVIEW_QUALITY)
    with atomic_path(layout.overview(slide_id)) as partial:
        picture.save(partial, format="PNG", compress_level=PNG_EFFORT)
    return layout.overview(slide_id)
