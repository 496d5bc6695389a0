"""The benchmark mosaic: real H&E mirrored into a grid, readable like a scan."""

from __future__ import annotations

import numpy as np
import pytest
import tiffslide

from cerberus_batch.slides import open_slide
from cerberus_batch.testing.mosaic import write_mosaic


def test_mosaic_is_the_source_mirrored(cmu_slide, tmp_path):
    with open_slide(cmu_slide) as source:
        w, h = source.info.dimensions
        mpp = source.info.mpp
        pixels = source.read_level(0, 0, 0, w, h)
    mosaic = write_mosaic(tmp_path / "mosaic.svs", cmu_slide, (2, 2), compression=None)  # lossless: exact pixels
    assert mosaic.grid == (2, 2) and mosaic.size == (2 * w, 2 * h)

    opened = tiffslide.TiffSlide(mosaic.path)
    assert opened.dimensions == (2 * w, 2 * h)
    assert float(opened.properties["tiffslide.mpp-x"]) == pytest.approx(mpp[0])
    assert list(opened.level_downsamples) == pytest.approx([1, 4, 16], rel=0.01)
    opened.close()

    with open_slide(mosaic.path) as slide:  # the package's own reader accepts it, mpp from metadata
        assert slide.info.mpp == pytest.approx(mpp) and slide.info.mpp_source == "metadata"
        for x, y in [(0, 0), (17, 301), (w - 1, h - 1), (w, 5), (w + 40, h + 7), (2 * w - 1, 2 * h - 1), (123, h + 456)]:
            sx = x if x < w else 2 * w - 1 - x  # odd columns run right to left
            sy = y if y < h else 2 * h - 1 - y  # odd rows bottom to top
            assert np.array_equal(slide.read_level(0, x, y, 1, 1)[0, 0], pixels[sy, sx]), (x, y)
        # a whole region across the corner where the four copies meet
        region = slide.read_level(0, w - 3, h - 2, 6, 4)
        expected = pixels[np.ix_([h - 2, h - 1, h - 1, h - 2], [w - 3, w - 2, w - 1, w - 1, w - 2, w - 3])]
        assert np.array_equal(region, expected)
