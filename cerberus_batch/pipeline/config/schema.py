"""The cohort file's sections as users write them, and the cohort they resolve to."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveInt, field_validator

from cerberus_batch.cluster.spec import ClusterSpec, Strict
from cerberus_batch.defaults import BATCH_SIZE, CHUNK, PROCESSING_MPP, TILE
from cerberus_batch.grid import CELL
from cerberus_batch.model.factory import MODEL_KINDS
from cerberus_batch.slides.location import Location
from cerberus_batch.slides.slide import Slide, open_slide
from cerberus_batch.slides.sources import PLAUSIBLE_MPP, Reader
from cerberus_batch.storage.maps import map_specs
from cerberus_batch.vocabulary import HEAD_MAPS, model_class_names

# A batch never holds more passes than fit in memory anyway (`model.memory`); even patch mode's 448-px
# passes, the smallest, fill the largest accelerators (~140 GB) at several hundred, so more is a typo.
MAX_BATCH_SIZE = 1024
# One chunk's stored maps (uint8 or float16); a chunk task also holds the model's float32 outputs for the
# whole chunk (about 10x more) and its input, so this keeps a chunk task within a few GB of a worker.
CHUNK_MAPS_BYTES = 256 * 2**20


def microscope_mpp(value: float) -> float:
    """`value` (µm/px), or ValueError where no microscope records it: a level-0 resolution outside
    that range is a wrong override, and processing outside it is interpolation beyond any scan or
    coarser than a nucleus (Cerberus was trained at `defaults.PROCESSING_MPP`).

    A ValueError, as pydantic asks of a validator: the cohort loader reports it as the field's problem."""
    low, high = PLAUSIBLE_MPP
    if not low <= value <= high:  # also refuses nan
        raise ValueError(f"{value:g} µm/px is outside {low:g}–{high:g} µm/px, the resolutions microscopes record")
    return value


Mpp = Annotated[float, AfterValidator(microscope_mpp)]


def registered_kind(name: str) -> str:
    """`name`, or ValueError (the field's problem, as `microscope_mpp`) where no model kind is registered under it."""
    if name not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {name!r}; expected one of {', '.join(MODEL_KINDS)}")
    return name


def chunk_bytes_per_px(dtype: str) -> float:
    """Bytes per processing px of a chunk of every map a run may store, probabilities as `dtype`."""
    return sum(spec.bytes_per_px(dtype) for spec in map_specs(HEAD_MAPS, model_class_names()))


def largest_chunk(dtype: str) -> int:
    """The largest chunk (whole cells) whose maps fit in CHUNK_MAPS_BYTES."""
    return math.isqrt(int(CHUNK_MAPS_BYTES / chunk_bytes_per_px(dtype))) // CELL * CELL


class SlideSpec(Strict):
    path: str  # a path or a URL (str: a Path would fold the "//" of "s3://")
    id: Optional[str] = None
    mask: Optional[str] = None
    # Level-0 µm/px: `mpp` stands in only where the slide's metadata has none; `mpp_override` replaces it.
    mpp: Optional[Mpp] = None
    mpp_override: Optional[Mpp] = None
    reader: Optional[Reader] = None  # this slide's reader; default: processing.reader


class SlideGlob(Strict):
    glob: str
    masks: Optional[str] = None  # e.g. "masks/{stem}.png"
    mpp: Optional[Mpp] = None  # for every slide it matches, as a SlideSpec's
    mpp_override: Optional[Mpp] = None
    reader: Optional[Reader] = None


class SlideManifest(Strict):
    manifest: str  # CSV (path or URL) with columns path[,id,mask,mpp,mpp_override,reader]


class ModelSpec(Strict):
    kind: Annotated[str, AfterValidator(registered_kind)] = "cerberus"  # a name in model.factory.MODEL_KINDS
    weights: Optional[Path] = None  # folder with weights.tar + settings.yml
    heads: list[Literal["nuclei", "gland", "lumen", "tissue"]] = ["nuclei", "gland", "lumen", "tissue"]
    device: Optional[str] = None  # e.g. "cuda", "cpu"; default: CUDA when present
    amp: Optional[Literal["bf16", "fp16"]] = None  # the speed option (CPU: bf16 only); maps differ from fp32 Cerberus


class ProcessingSpec(Strict):
    mpp: Mpp = PROCESSING_MPP
    chunk: PositiveInt = CHUNK  # output px per chunk side
    mode: Literal["tile", "patch"] = "tile"
    tile: PositiveInt = TILE  # output px per forward pass in tile mode
    batch_size: int = Field(BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE)
    tissue_mask: Literal["auto", "none", "given"] = "auto"
    dtype: Literal["uint8", "float16"] = "uint8"
    reader: Reader = "auto"  # who reads the cohort's slides, unless a slide names its own

    @field_validator("chunk", "tile")
    @classmethod
    def _whole_cells(cls, value: int) -> int:
        if value % CELL:
            raise ValueError(f"must be a multiple of {CELL} (output cell size), got {value}")
        return value


class CohortFile(Strict):
    name: str
    output: Path
    slides: Any
    model: ModelSpec = Field(default_factory=ModelSpec)
    processing: ProcessingSpec = Field(default_factory=ProcessingSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    # fsspec options for every URL of the cohort (e.g. {key, secret, endpoint_url} for s3://); never recorded.
    storage_options: dict[str, Any] = Field(default_factory=dict)


class SlideEntry(BaseModel):
    """One slide of the cohort, with every path resolved (frozen: workers key their open slides by it)."""

    model_config = ConfigDict(frozen=True)

    id: str
    path: Location
    mask: Optional[Location] = None
    mpp: Optional[float] = None  # where the slide's metadata has none
    mpp_override: Optional[float] = None  # instead of the metadata's
    mpp_fix: str = ""  # how to give this slide an mpp, in the form its cohort lists it
    reader: Optional[Reader] = None  # set by load_cohort: the slide's own or the cohort's processing.reader

    def open(self) -> Slide:
        """The slide, its level-0 mpp by the one rule (override, else metadata, else fallback)."""
        return open_slide(self.path, mpp=self.mpp_override, reader=self.reader, fallback_mpp=self.mpp, no_mpp_fix=self.mpp_fix)


class Cohort(BaseModel):
    source: Path
    name: str
    output: Path
    slides: list[SlideEntry]
    model: ModelSpec
    processing: ProcessingSpec
    cluster: ClusterSpec
    manifest: Optional[Location] = None  # the CSV the slides are listed in, if the cohort file names one
