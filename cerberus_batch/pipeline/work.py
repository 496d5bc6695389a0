"""What each Dask task does on a worker: plan a slide, infer a chunk, find a chunk's instances,
finish a share of the nuclei on chunk borders, merge a slide, draw its overview, build its maps'
viewer levels. Tasks are named `<what>_task`; the pure work they wrap lives in tasks/, slides/ and storage/.

Models and open slides are cached per worker process, so a worker loads the
model once and opens each slide once however many chunks it runs.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from distributed import get_worker

from cerberus_batch.grid import ChunkBox, whole_cells
from cerberus_batch.model.factory import build_predictor, describe_model
from cerberus_batch.model.options import InferenceOptions
from cerberus_batch.model.predictor import ModelDescription, Predictor, numerics
from cerberus_batch.overview import write_overview
from cerberus_batch.pipeline.attributes import map_attributes
from cerberus_batch.pipeline.config import Cohort, ModelSpec, ProcessingSpec, SlideEntry
from cerberus_batch.pipeline.crossed import slide_crossed
from cerberus_batch.pipeline.plan import plan_slide
from cerberus_batch.pipeline.stages import TOPIC, StageClock, TimedReads
from cerberus_batch.pipeline.worker_memory import heap_given_back
from cerberus_batch.slides import ChunkPlan, Transform
from cerberus_batch.slides.location import Fetched, Location, fetched
from cerberus_batch.slides.sources import source_identity
from cerberus_batch.storage.atomic import atomic_path
from cerberus_batch.storage.maps import map_specs
from cerberus_batch.storage.layout import BORDER_PART, OutputLayout
from cerberus_batch.storage.ledger import NUMERICS, Ledger
from cerberus_batch.storage.pyramid import build_pyramid
from cerberus_batch.storage.summary import slide_summary
from cerberus_batch.storage.tables import recover_slide_tables, stage_table_part, write_slide_tables
from cerberus_batch.storage.zarr_maps import (
    ChunkCache, create_slide_maps, maps_match, worker_maps, write_chunk,
)
from cerberus_batch.tasks.infer import predict_chunk, stored_maps
from cerberus_batch.tasks.border import BorderShare, border_nuclei
from cerberus_batch.tasks.chunk import ChunkResult, chunk_instances
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.kinds import SlideKinds
from cerberus_batch.tasks.merge import merge_slide


def cohort_predictor(
    model: ModelSpec, processing: ProcessingSpec, device: str | None = None, memory: float | None = None,
) -> Predictor:
    """The model a cohort asks for."""
    options = InferenceOptions(
        mode=processing.mode, tile=processing.tile, batch_size=processing.batch_size,
        device=device or model.device, amp=model.amp, memory=memory,
    )
    return build_predictor(model.kind, model.weights, model.heads, options)


def checked_predictor(cohort: Cohort) -> Predictor:
    """The cohort's model loaded where the run starts, before any slide (and by `validate`), so a broken
    checkpoint is refused first; on the CPU, where AMP does not apply (workers use the cohort's device and AMP)."""
    return cohort_predictor(cohort.model.model_copy(update={"amp": None}), cohort.processing, device="cpu")


def _predictor(model: ModelSpec, processing: ProcessingSpec) -> Predictor:
    """This worker process's model, loaded on first use."""
    return _cached_predictor(model.model_dump_json(), processing.model_dump_json(), _thread_memory())


def _thread_memory() -> float | None:
    """A worker thread's share of its worker's memory limit (None: no limit, or not in a worker), for its batches."""
    try:
        worker = get_worker()
    except ValueError:  # called outside Dask (tests, benchmarks)
        return None
    limit = worker.memory_manager.memory_limit
    return limit / max(1, worker.state.nthreads) if limit else None


@contextmanager
def task_clock(slide_id: str, rest: str) -> Iterator[StageClock]:
    """A clock for one task of a slide (`stages`); when the task ends, done or failed, its seconds by stage
    go to the run as a Dask event."""
    clock = StageClock(rest)
    try:
        yield clock
    finally:
        try:
            worker = get_worker()
        except ValueError:  # not on a Dask worker (tests, benchmarks): nobody to tell
            pass
        else:  # before the task's result: the worker's stream keeps the two in order, so the run has it when it sees the task end
            worker.log_event(TOPIC, {"slide": slide_id, "seconds": clock.seconds()})


@lru_cache(maxsize=4)
def _described(model_json: str) -> ModelDescription:
    """What this worker process's plan tasks need of the cohort's model, read without building it."""
    model = ModelSpec.model_validate_json(model_json)
    return describe_model(model.kind, model.weights, model.heads)


@lru_cache(maxsize=2)
def _cached_predictor(model_json: str, processing_json: str, memory: float | None) -> Predictor:
    return cohort_predictor(
        ModelSpec.model_validate_json(model_json), ProcessingSpec.model_validate_json(processing_json), memory=memory,
    )


def map_settings(processing: ProcessingSpec) -> dict[str, Any]:
    """The processing settings that shape the maps (batch size never does)."""
    return processing.model_dump(mode="json", exclude={"batch_size"})


@lru_cache(maxsize=8)
def _cached_view(slide: SlideEntry, target_mpp: float, identity: str):
    """The slide as its worker keeps it open. Keyed by the source's identity too: a long-lived worker
    opens a replaced slide anew, never reading it through the old file's handle."""
    return slide.open().at_mpp(target_mpp)


def _identity_key(identity: dict[str, Any]) -> str:
    return json.dumps(identity, sort_keys=True)


def plan_slide_task(slide: SlideEntry, model: ModelSpec, processing: ProcessingSpec, output: Path) -> tuple[ChunkPlan, Fetched]:
    """Open a slide, find its tissue, cut it into chunks and create its (empty) map group; returns the
    plan and what reading a remote slide fetched."""
    with task_clock(slide.id, "plan") as clock:
        with fetched(slide.path) as fetches:
            with clock("read"):  # the slide, opened once per worker process
                identity = source_identity(slide.path, slide.reader or "auto")
                view = _cached_view(slide, processing.mpp, _identity_key(identity))
            mask, plan = plan_slide(view, slide, processing)
        with clock("write"):
            _create_slide_outputs(slide, view, mask, plan, identity, _described(model.model_dump_json()), processing, output)
    return plan, fetches


def _create_slide_outputs(slide: SlideEntry, view, mask, plan: ChunkPlan, identity: dict[str, Any],
                          described: ModelDescription, processing: ProcessingSpec, output: Path) -> None:
    """Write the slide's mask and plan, and create its map group unless one made for this very plan is there."""
    layout = OutputLayout(output)
    with atomic_path(layout.mask(slide.id)) as partial:
        mask.save_png(partial)
    with atomic_path(layout.plan(slide.id)) as partial:
        partial.write_text(plan.to_json())
    # The slide's level-0 (w, h): maps are background past it and outlines are cut to it. Groups
    # made before it was recorded held model output there, so they never match and are remade.
    attrs = map_attributes(
        slide.id, slide.path, plan.mpp, plan.transform, described,
        plan=hashlib.sha256(plan.to_json().encode()).hexdigest(), processing=map_settings(processing),
        slide_dimensions=list(view.slide.info.dimensions),
        reader=view.slide.info.reader,  # who decoded the pixels: another reader's maps are remade, never mixed
        source=identity,  # a replaced slide file or object is replanned, never mixed with the old maps
    )
    path = layout.maps(slide.id)
    recover_slide_tables(output, slide.id)  # before this run stages any part of the slide
    if not maps_match(path, attrs):
        # New slide, or its plan changed (another mask, mpp override or file): start it afresh,
        # so no chunk recorded against the old plan is ever taken for one of the new. Its
        # tables stay readable until the new ones replace them, each kind whole.
        Ledger(output).forget(slide.id)
        specs = map_specs(described.heads, described.class_names)
        create_slide_maps(path, shape=whole_cells(view.shape), chunk=processing.chunk, specs=specs, dtype=processing.dtype, attrs=attrs)


def infer_chunk_task(
    slide: SlideEntry, chunk_index: int, box: ChunkBox, empty_cells: list[tuple[int, int]],
    model: ModelSpec, processing: ProcessingSpec, output: Path,
) -> Fetched:
    """Infer one chunk, write its maps, then record it in the ledger; returns what reading a remote slide fetched."""
    with task_clock(slide.id, "store") as clock:
        opened = worker_maps(OutputLayout(output).maps(slide.id), writable=True)
        with fetched(slide.path) as fetches:
            with clock("read"):  # the slide, opened once per worker process
                # The identity its plan was made for: chunks never read a slide replaced since through an old handle.
                view = _cached_view(slide, processing.mpp, _identity_key(opened.attrs["source"]))
            with clock("model"):  # the model (loaded once per worker process) and its forward pass
                predictor = _predictor(model, processing)
                outputs = predict_chunk(clock.timed("read", view.read), predictor, box, empty_cells, heap_given_back)
        specs = map_specs(predictor.heads, predictor.class_names)
        x, y, w, h = box
        inside = (min(h, view.shape[0] - y), min(w, view.shape[1] - x))  # the last cells overhang the slide
        stored = stored_maps(outputs, specs, empty_cells, inside, processing.dtype)
        with clock("write"):  # the maps and the first viewer levels made of them
            write_chunk(opened.levels, x, y, stored, specs)
            Ledger(output).mark_done(slide.id, chunk_index)
    return fetches


def fingerprint(model: ModelSpec, processing: ProcessingSpec, predictor: Predictor, gpu_workers: bool | None) -> dict[str, Any]:
    """What determines the maps; a rerun into the same output must match it.

    Inference runs where the cohort's device says, else on the GPU workers when there are any.
    `gpu_workers` None: the cluster has not started, so numerics that depend on its workers are left out."""
    found = {"model_identity": predictor.identity, "heads": sorted(predictor.heads), "processing": map_settings(processing)}
    if model.device is None and gpu_workers is None and predictor.kind == "cerberus":
        return found
    device = model.device.split(":")[0] if model.device else ("cuda" if gpu_workers else "cpu")  # "cuda:1" → "cuda"
    return {**found, NUMERICS: numerics(predictor.kind, device, model.amp)}


def _slide_maps(
    output: Path, slide_id: str, clock: StageClock,
) -> tuple[dict[str, Any], Mapping[str, Any], SlideGeometry, SlideKinds]:
    """The slide's Zarr arrays (read lazily, window by window, each read timed by `clock`), its attributes,
    where its objects lie, and its object kinds and tissue types as its model names them.

    Each array is read a whole chunk at a time, past Zarr's async reads (`ChunkCache`): a chunk task reads
    its own chunk, border and merge tasks many small windows across chunk borders."""
    opened = worker_maps(OutputLayout(output).maps(slide_id))
    attrs = opened.attrs
    transform = Transform.from_dict(attrs["transform"])
    geometry = SlideGeometry(slide_id, transform, attrs["mpp"], tuple(attrs["slide_dimensions"]))
    maps = {name: TimedReads(ChunkCache(array), clock) for name, array in opened.arrays.items()}
    return maps, attrs, geometry, SlideKinds.for_model("wsi", attrs["class_names"])


def chunk_instances_task(
    slide_id: str, chunk_index: int, box: ChunkBox, output: Path, token: str, inferred: Fetched | None = None,
) -> ChunkResult:
    """Finish the objects that lie inside one chunk and stage them as its table part (run `token`);
    return only the fragments crossing its borders, so the merge never receives the chunk's objects.

    It reads only the chunk's own maps. `inferred` is the chunk's inference task when this run
    computes it: Dask starts this task as soon as that one is done, while other chunks still infer.
    """
    with task_clock(slide_id, "postprocess") as clock:
        maps, _, geometry, kinds = _slide_maps(output, slide_id, clock)
        result = chunk_instances(maps, box, geometry, kinds)
        with clock("write"):
            for kind, table in result.tables.items():
                if len(table):
                    stage_table_part(output, slide_id, token, kind, chunk_index, table)
    return replace(result, tables={})


def border_task(
    slide_id: str, output: Path, token: str, index: int, share: BorderShare, parts: list[ChunkResult],
) -> dict[str, np.ndarray]:
    """Finish one share of the nuclei cut by chunk borders (see `border_nuclei`; `parts` are the
    results of the share's chunks), stage them as the slide's table part `index` (run `token`), and
    return which nuclei it finished."""
    with task_clock(slide_id, "postprocess") as clock:
        maps, _, geometry, kinds = _slide_maps(output, slide_id, clock)
        done = border_nuclei(maps, parts, geometry, kinds, share)
        with clock("write"):
            for kind, table in done.tables.items():
                if len(table):
                    stage_table_part(output, slide_id, token, kind, f"{BORDER_PART}{index}", table)
    return done.finished


def merge_slide_task(
    slide_id: str, output: Path, tissue_mm2: float, token: str, parts: list[ChunkResult],
    borders: list[dict[str, np.ndarray]],
) -> dict[str, Any]:
    """Join glands and lumens across chunk borders, finish the nuclei on them that no border task
    could, find tissue regions, and commit the slide's tables (the parts its chunk and border tasks
    staged under `token`, and the merge's); returns its summary row, counted from the committed
    tables. `borders` are what the slide's border tasks finished.

    `tissue_mm2` is the plan's tissue area (the mask's); the row adds each tissue type's area, its objects
    crossed with the tissue types and the named readouts (`crossed.slide_crossed`).
    """
    started = time.perf_counter()
    with task_clock(slide_id, "postprocess") as clock:
        maps, attrs, geometry, kinds = _slide_maps(output, slide_id, clock)
        finished = {kind: np.concatenate([done[kind] for done in borders]) for kind in set().union(*borders)}
        merged = merge_slide(maps, parts, geometry, kinds, finished)
        with clock("write"):
            write_slide_tables(output, slide_id, merged, token)
        tissue_px = ChunkPlan.from_json(OutputLayout(output).plan(slide_id).read_text()).tissue_cells()
        types, readouts, composition = slide_crossed(output, maps, geometry, kinds.tissue_classes, tissue_px)
        return slide_summary(output, slide_id, tissue_mm2, types, time.perf_counter() - started, readouts, composition,
                             attrs["heads"])


def overview_task(slide_id: str, output: Path, summary: dict[str, Any], source: Location | None = None) -> dict[str, Any]:
    """Draw the slide's QC picture from its committed tables; passes the merge's summary row on.

    A task of its own: drawing reads every object of the slide, the merge only those on chunk borders."""
    with task_clock(slide_id, "overview"):
        write_overview(output, slide_id, summary, source=source)
    return summary


def pyramid_task(slide_id: str, output: Path, inferred: list[Fetched]) -> dict[str, int]:
    """Build the viewer levels of the slide's maps the chunk tasks did not; returns how many levels each map has.

    `inferred` are the slide's inference tasks this run computes: Dask starts this one once all are done."""
    with task_clock(slide_id, "levels"):
        return build_pyramid(OutputLayout(output).maps(slide_id))
