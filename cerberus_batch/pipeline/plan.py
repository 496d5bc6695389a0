"""Cohort → per-slide chunk plans (tissue mask first), shared by `validate` and the run."""

from __future__ import annotations

from typing import Iterator

from cerberus_batch.errors import first_line, is_bug
from cerberus_batch.pipeline.config import Cohort, ProcessingSpec, SlideEntry
from cerberus_batch.slides import ChunkPlan, SlideView, TissueMask, plan_chunks, tissue_mask
from cerberus_batch.slides.plan import check_extent
from cerberus_batch.slides.slide import SlideInfo


NO_TISSUE = "no tissue found: nothing to infer (check the slide's mask)"  # what run and validate say of an empty plan


def plan_slide(view: SlideView, slide: SlideEntry, processing: ProcessingSpec) -> tuple[TissueMask, ChunkPlan]:
    """Plan a cohort's slide: the tissue mask it gets (its own file wins over the cohort default) and its chunks.

    The one planning step of `validate`, `run` and the benchmarks; `slides.plan_chunks` does the cutting."""
    check_extent(view)  # before the mask reads a slide of absurd size
    source = slide.mask or ("none" if processing.tissue_mask == "none" else "auto")
    mask = tissue_mask(view, source, slide_path=slide.path)
    return mask, plan_chunks(view, mask, chunk=processing.chunk, slide_id=slide.id)


def plan_cohort(cohort: Cohort) -> Iterator[tuple[SlideEntry, ChunkPlan | None, str | None, SlideInfo | None]]:
    """Plan every slide in turn, with what its file says of it (once it opens); a slide we refuse or
    cannot read yields its one-line error. Anything else is a bug and is raised (`errors.is_bug`)."""
    for slide in cohort.slides:
        info = None
        try:
            with slide.open() as opened:
                info = opened.info
                _, plan = plan_slide(opened.at_mpp(cohort.processing.mpp), slide, cohort.processing)
        except Exception as err:  # noqa: BLE001 - a bug goes on up, never shown as the slide's problem
            if is_bug(err):
                raise
            yield slide, None, first_line(err), info
            continue
        yield slide, plan, None, info
