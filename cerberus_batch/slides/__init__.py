"""Slides: reading at the processing resolution, tissue masks and chunk plans."""

from cerberus_batch.errors import SlideError
from cerberus_batch.slides.mask import TissueMask, detect_tissue, tissue_mask
from cerberus_batch.slides.plan import Chunk, ChunkPlan, cell_tissue, plan_chunks
from cerberus_batch.slides.slide import Slide, SlideInfo, open_slide
from cerberus_batch.slides.transform import Transform
from cerberus_batch.slides.view import SlideView

__all__ = [
    "Chunk",
    "ChunkPlan",
    "Slide",
    "SlideError",
    "SlideInfo",
    "SlideView",
    "TissueMask",
    "Transform",
    "cell_tissue",
    "detect_tissue",
    "open_slide",
    "plan_chunks",
    "tissue_mask",
]
