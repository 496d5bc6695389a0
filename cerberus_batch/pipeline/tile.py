"""`cerberus-batch tile`: a folder of image tiles → maps, instance tables and an overlay per image.

Each image becomes `<output>/<relative path without suffix>/` holding its maps (with their viewer
levels, `storage.pyramid`), a table per object kind and an overlay (`storage.layout.ImageLayout`).
As in the reference's tile mode (spec §7), an image is padded with numpy `reflect` to whole
144-px cells plus the 152-px context, and glands and lumens are post-processed at
full resolution (ds = 1). Tables are in the image's own pixels. Images run one
after another in this process; no Dask.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from cerberus_batch.defaults import PROCESSING_MPP, TILE
from cerberus_batch.errors import failure_line, is_bug
from cerberus_batch.grid import CONTEXT, whole_cells
from cerberus_batch.model.predictor import Predictor
from cerberus_batch.overview import draw_instances
from cerberus_batch.pipeline.attributes import map_attributes
from cerberus_batch.slides import Transform, open_slide
from cerberus_batch.storage.atomic import atomic_path
from cerberus_batch.storage.layout import ImageLayout
from cerberus_batch.storage.maps import map_specs
from cerberus_batch.storage.output_folder import claim_output
from cerberus_batch.storage.owned import claim_folders
from cerberus_batch.storage.pyramid import build_pyramid
from cerberus_batch.storage.tables import write_geoparquet
from cerberus_batch.storage.zarr_maps import create_slide_maps, level_arrays, write_chunk
from cerberus_batch.tasks.infer import stored_maps
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.kinds import SlideKinds
from cerberus_batch.tasks.whole import slide_instances
from cerberus_batch.vocabulary import DRAWING_ORDER, StoredMap

log = logging.getLogger("cerberus_batch")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAP_CHUNK = TILE  # processing px per Zarr chunk side: a tile-mode pass


@dataclass
class TileOutcome:
    """What became of one input image."""

    image: Path
    folder: Path  # its output folder
    error: str | None = None  # one line; None when done
    traceback: str | None = None  # where the error is a bug (`errors.is_bug`): its traceback
    counts: dict[str, int] = field(default_factory=dict)


def find_images(input_dir: Path) -> list[Path]:
    """PNG, JPEG and TIFF files under `input_dir` (recursive), sorted; hidden files skipped."""
    return sorted(
        path for path in Path(input_dir).rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def reflect_padded(image: np.ndarray) -> np.ndarray:
    """The image padded with numpy `reflect` (spec §7.2): the context before it, whole output cells
    plus the context after it. The reference pads one patch further, which it never reads."""
    (h, w), (grid_h, grid_w) = image.shape[:2], whole_cells(image.shape)
    return np.pad(image, ((CONTEXT, grid_h - h + CONTEXT), (CONTEXT, grid_w - w + CONTEXT), (0, 0)), mode="reflect")


def tile_specs(predictor: Predictor) -> list[StoredMap]:
    """The slide maps, with glands and lumens kept at full resolution, as tile mode post-processes them."""
    specs = map_specs(predictor.heads, predictor.class_names)
    return [replace(spec, downsample=1) if spec.downsample == 2 else spec for spec in specs]


def image_maps(image: np.ndarray, predictor: Predictor, specs: list[StoredMap]) -> dict[str, np.ndarray]:
    """Stored-form maps on the whole-cell grid; pixel maps are zero beyond the image."""
    return stored_maps(predictor.predict(reflect_padded(image)), specs, [], image.shape[:2])


def read_image(path: Path, mpp: float | None) -> tuple[np.ndarray, np.ndarray, Transform, float]:
    """(the image, the image at ~0.5 µm/px, processing px → image px, its true µm/px).

    Without `mpp` the two images are one; an image within 2% of 0.5 µm/px is read as is."""
    with open_slide(path, mpp=mpp) as slide:
        width, height = slide.info.dimensions
        original = slide.read_level(0, 0, 0, width, height)
        if mpp is None:
            return original, original, Transform(1.0, 1.0), PROCESSING_MPP
        view = slide.at_mpp(PROCESSING_MPP)
        return original, view.read(0, 0, view.shape[1], view.shape[0]), view.transform, view.mpp


def process_image(path: Path, folder: Path, predictor: Predictor, mpp: float | None = None) -> dict[str, int]:
    """Infer one image and write its output folder, which appears whole (replacing an older one) or not at all.

    `mpp` is the image's own µm/px; without it the image is taken to be at 0.5 µm/px already.
    Returns the instance count per kind.
    """
    original, image, transform, image_mpp = read_image(path, mpp)
    specs = tile_specs(predictor)
    stored = image_maps(image, predictor, specs)
    h, w = image.shape[:2]
    # Post-processing sees the image only, as the reference crops before it (spec §7.3).
    inside = {s.name: stored[s.name][..., :h, :w] if s.downsample == 1 else stored[s.name] for s in specs}
    geometry = SlideGeometry(folder.name, transform, image_mpp, (original.shape[1], original.shape[0]))
    tables = slide_instances(inside, geometry, SlideKinds.for_model("tile", predictor.class_names))
    with atomic_path(folder) as partial:
        partial.mkdir()
        written = ImageLayout(partial)
        group = create_slide_maps(written.maps, shape=whole_cells(image.shape), chunk=MAP_CHUNK, specs=specs, dtype="uint8",
                                  attrs=map_attributes(folder.name, path, image_mpp, transform, predictor,
                                                       image_shape=[h, w], mode="tile"))
        write_chunk(level_arrays(group), 0, 0, stored, specs)
        build_pyramid(written.maps)
        overlay = Image.fromarray(original)
        for kind in DRAWING_ORDER:
            write_geoparquet(tables[kind.name], written.table(kind.name))
            draw_instances(overlay, kind.name, [tables[kind.name]], 1.0)
        overlay.save(written.overlay)
    return {kind.name: len(tables[kind.name]) for kind in DRAWING_ORDER}


def run_tile_mode(
    input_dir: Path, output_dir: Path, predictor: Predictor, mpp: float | None = None,
    on_image: Callable[[TileOutcome], None] | None = None, model_dir: Path | None = None,
) -> list[TileOutcome]:
    """Every image of `input_dir` in turn; one that fails is reported and the others go on.

    The output folder must stand apart from the input folder and `model_dir`, no other run may
    hold it, and no image's folder there may be a user's (OutputError otherwise, before anything is written).
    """
    inputs = {"input folder": Path(input_dir)} | ({"model folder": Path(model_dir)} if model_dir else {})
    with claim_output(Path(output_dir), inputs, "cerberus-batch tile") as lock:
        if lock.taken_over is not None:
            log.warning("WARNING %s: took over the lock of a run that is gone (%s)", output_dir, lock.taken_over.describe())
        return _run_images(Path(input_dir), Path(output_dir), predictor, mpp, on_image)


def _run_images(
    input_dir: Path, output_dir: Path, predictor: Predictor, mpp: float | None, on_image: Callable[[TileOutcome], None] | None,
) -> list[TileOutcome]:
    images = find_images(input_dir)
    folders = [output_dir / path.relative_to(input_dir).with_suffix("") for path in images]
    # D/a.png and D/a/b.png: a's folder would hold b's, and replacing it would remove b's output.
    holds = {
        ancestor: path for folder, path in zip(folders, images)
        for ancestor in folder.parents if ancestor != output_dir and ancestor.is_relative_to(output_dir)
    }
    outcomes, claimed = [], {}
    for path, folder in zip(images, folders):
        outcome = TileOutcome(path, folder)
        if folder in claimed:
            outcome.error = f"{path}: same output folder {folder} as {claimed[folder]}"
        elif folder in holds:
            outcome.error = f"{path}: its output folder {folder} would hold the output of {holds[folder]}; rename one of them"
        else:
            claimed[folder] = path
        outcomes.append(outcome)
    claim_folders(list(claimed))  # a user's file or folder in the way: refused before any image is processed
    for outcome in outcomes:
        if outcome.error is None:
            try:
                outcome.counts = process_image(outcome.image, outcome.folder, predictor, mpp)
            except Exception as err:  # any failure is this image's alone; the run reports it and goes on
                outcome.error = failure_line(err, path=outcome.image)
                if is_bug(err):
                    outcome.traceback = "".join(traceback.format_exception(err))
        if on_image is not None:
            on_image(outcome)
    return outcomes
