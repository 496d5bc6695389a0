"""Where a slide's objects lie: what turns map pixels into a slide's table rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: tasks need not load the slide readers
    from cerberus_batch.slides.transform import Transform

MAP_EDGE_SLACK = 1e-6  # map px: a map px reaching past the slide's edge by no more is taken as inside it


@dataclass(frozen=True)
class SlideGeometry:
    """A slide's id, its processing px → level-0 px `transform`, its true µm per processing px and its
    level-0 `bounds` (w, h; None for maps of no slide, whose grid is the image)."""

    slide_id: str
    transform: Transform
    mpp: float
    bounds: tuple[float, float] | None = None

    def on_slide(self, shape: tuple[int, int], downsample: int) -> tuple[int, int]:
        """Rows and columns of a map (processing px per map px: `downsample`) that cover part of the slide."""
        if self.bounds is None:
            return shape
        x, y = self.transform.from_level0(*self.bounds)
        # A map px reaching past the edge by float error alone is not on the slide.
        rows, cols = (math.ceil(v / downsample - MAP_EDGE_SLACK) for v in (y, x))
        return min(shape[0], rows), min(shape[1], cols)
