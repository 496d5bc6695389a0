"""What each Dask task does on a worker: plan a slide, infer a chunk.

Models and open slides are cached per worker process, so a worker loads the
model once and opens each slide once however many chunks it runs.
"""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from cerberus_batch import __version__
from cerberus_batch.grid import whole_cells
from cerberus_batch.model.predictor import Predictor
from cerberus_batch.pipeline.config import ModelSpec, ProcessingSpec, SlideEntry
from cerberus_batch.pipeline.ledger import Ledger
from cerberus_batch.pipeline.plan import plan_slide_chunks
from cerberus_batch.slides import ChunkPlan, Transform, open_slide
from cerberus_batch.storage.atomic import atomic_path
from cerberus_batch.storage.maps import map_specs
from cerberus_batch.storage.overview import write_overview
from cerberus_batch.storage.summary import slide_summary
from cerberus_batch.storage.tables import remove_slide_tables, write_slide_tables
from cerberus_batch.storage.zarr_maps import create_slide_maps, maps_match, maps_path, open_slide_maps, write_chunk
from cerberus_batch.tasks.infer import predict_chunk, stored_maps
from cerberus_batch.tasks.instances import TISSUE_CLASSES
from cerberus_batch.tasks.merge import ChunkResult, chunk_instances, merge_slide
from cerberus_batch.tasks.postprocess import cerberus_kinds

def build_predictor(model: ModelSpec, processing: ProcessingSpec, device: str | None = None) -> Predictor:
    """The model a cohort asks for."""
    if model.kind == "stain":
        from cerberus_batch.model.stain import StainPredictor

        return StainPredictor()
    from cerberus_batch.model import CerberusPredictor

    return CerberusPredictor(
        model.weights,
        heads=model.heads,
        mode=processing.mode,
        tile=processing.tile,
        batch_size=processing.batch_size,
        device=device or model.device,
        amp=model.amp,
    )


def _predictor(model: ModelSpec, processing: ProcessingSpec) -> Predictor:
    """This worker process's model, loaded on first use."""
    return _cached_predictor(model.model_dump_json(), processing.model_dump_json())


@lru_cache(maxsize=2)
def _cached_predictor(model_json: str, processing_json: str) -> Predictor:
    return build_predictor(ModelSpec.model_validate_json(model_json), ProcessingSpec.model_validate_json(processing_json))


def map_settings(processing: ProcessingSpec) -> dict[str, Any]:
    """The processing settings that shape the maps (batch size never does)."""
    return processing.model_dump(mode="json", exclude={"batch_size"})


@lru_cache(maxsize=8)
def _cached_view(path: str, mpp_override: float | None, target_mpp: float):
    return open_slide(path, mpp=mpp_override).at_mpp(target_mpp)


def slide_attrs(slide: SlideEntry, plan: ChunkPlan, predictor: Predictor, processing: ProcessingSpec) -> dict[str, Any]:
    return {
        "slide_id": slide.id,
        "slide_path": str(slide.path),
        "mpp": plan.mpp,  # true µm per processing px (e.g. 0.499 for a natively read 0.499 level)
        "transform": plan.transform.to_dict(),
        "plan": hashlib.sha256(plan.to_json().encode()).hexdigest(),
        "model_kind": predictor.kind,
        "model_identity": predictor.identity,
        "heads": list(predictor.heads),
        "class_names": {k: list(v) for k, v in predictor.class_names.items()},
        "processing": map_settings(processing),
        "software": f"cerberus-batch {__version__}",
    }


def plan_slide(slide: SlideEntry, model: ModelSpec, processing: ProcessingSpec, output: Path) -> ChunkPlan:
    """Open a slide, find its tissue, cut it into chunks and create its (empty) map group."""
    view = _cached_view(str(slide.path), slide.mpp, processing.mpp)
    mask, plan = plan_slide_chunks(view, slide, processing)
    masks = Path(output) / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    mask.save_png(masks / f"{slide.id}.png")
    plans = Path(output) / "plans"
    plans.mkdir(parents=True, exist_ok=True)
    with atomic_path(plans / f"{slide.id}.json") as partial:
        partial.write_text(plan.to_json())
    predictor = _predictor(model, processing)
    attrs = slide_attrs(slide, plan, predictor, processing)
    path = maps_path(output, slide.id)
    if not maps_match(path, attrs):
        # New slide, or its plan changed (another mask, mpp override or file): start it afresh,
        # so no chunk recorded against the old plan is ever taken for one of the new.
        Ledger(output).forget(slide.id)
        remove_slide_tables(output, slide.id)
        specs = map_specs(predictor.heads, predictor.class_names)
        create_slide_maps(path, shape=whole_cells(view.shape), chunk=processing.chunk, specs=specs, dtype=processing.dtype, attrs=attrs)
    return plan


def infer_chunk(
    slide: SlideEntry, chunk_index: int, box: tuple[int, int, int, int], empty_cells: list[tuple[int, int]],
    model: ModelSpec, processing: ProcessingSpec, output: Path,
) -> None:
    """Infer one chunk, write its maps, then record it in the ledger."""
    view = _cached_view(str(slide.path), slide.mpp, processing.mpp)
    predictor = _predictor(model, processing)
    outputs = predict_chunk(view.read, predictor, box)
    group = open_slide_maps(maps_path(output, slide.id), writable=True)
    specs = map_specs(predictor.heads, predictor.class_names)
    write_chunk(group, box[0], box[1], stored_maps(outputs, specs, empty_cells, processing.dtype), specs)
    Ledger(output).mark_done(slide.id, chunk_index)


def fingerprint(model: ModelSpec, processing: ProcessingSpec, predictor: Predictor) -> dict[str, Any]:
    """What determines the maps; a rerun into the same output must match it."""
    return {
        "model_identity": predictor.identity, "heads": sorted(predictor.heads), "amp": model.amp,
        "processing": map_settings(processing),
    }


def _slide_maps(output: Path, slide_id: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The slide's Zarr arrays (read lazily, window by window), its attributes, and where
    its objects lie (slide id, level-0 transform, mpp, object kinds named for its model)."""
    group = open_slide_maps(maps_path(output, slide_id))
    attrs = dict(group.attrs)
    place = {
        "slide_id": slide_id, "transform": Transform.from_dict(attrs["transform"]), "mpp": attrs["mpp"],
        "kinds": cerberus_kinds("wsi", attrs["class_names"]),
    }
    return {name: group[name] for name in group.array_keys()}, attrs, place


def chunk_instances_task(slide_id: str, box: tuple[int, int, int, int], output: Path) -> ChunkResult:
    """Finish the objects that lie inside one chunk; report those crossing its borders."""
    maps, _, place = _slide_maps(output, slide_id)
    return chunk_instances(maps, box, **place)


def merge_slide_task(slide_id: str, output: Path, tissue_mm2: float, parts: list[ChunkResult]) -> dict[str, Any]:
    """Join objects across chunk borders, write the slide's tables; returns its summary row."""
    started = time.perf_counter()
    maps, attrs, place = _slide_maps(output, slide_id)
    tables = merge_slide(maps, parts, tissue_classes=attrs["class_names"].get("Patch-Class", TISSUE_CLASSES), **place)
    write_slide_tables(output, slide_id, tables)
    write_overview(output, slide_id)
    return slide_summary(slide_id, tables, tissue_mm2, time.perf_counter() - started)
