"""The cohort file: what users write, validated before anything touches the output folder."""

from __future__ import annotations

import csv
import glob as globlib
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, Field, PositiveFloat, PositiveInt, ValidationError, field_validator

from cerberus_batch.cluster.spec import ClusterSpec, Strict
from cerberus_batch.errors import first_line
from cerberus_batch.grid import CELL

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class CohortError(ValueError):
    """A cohort file we refuse to run; the message names the file and the field or path."""


class SlideSpec(Strict):
    path: Path
    id: Optional[str] = None
    mask: Optional[Path] = None
    mpp: Optional[PositiveFloat] = None  # level-0 µm/px override for slides without metadata


class SlideGlob(Strict):
    glob: str
    masks: Optional[str] = None  # e.g. "masks/{stem}.png"
    mpp: Optional[PositiveFloat] = None


class SlideManifest(Strict):
    manifest: Path  # CSV with columns path[,id,mask,mpp]


class ModelSpec(Strict):
    kind: Literal["cerberus", "stain"] = "cerberus"
    weights: Optional[Path] = None  # folder with weights.tar + settings.yml
    heads: list[Literal["nuclei", "gland", "lumen", "tissue"]] = ["nuclei", "gland", "lumen", "tissue"]
    device: Optional[str] = None  # e.g. "cuda", "cpu"; default: CUDA when present
    amp: Optional[Literal["bf16", "fp16"]] = None


class ProcessingSpec(Strict):
    mpp: PositiveFloat = 0.5
    chunk: PositiveInt = 2016  # output px per chunk side
    mode: Literal["tile", "patch"] = "tile"
    tile: PositiveInt = 1008  # output px per forward pass in tile mode
    batch_size: PositiveInt = 8
    tissue_mask: Literal["auto", "none", "given"] = "auto"
    dtype: Literal["uint8", "float16"] = "uint8"

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


class SlideEntry(BaseModel):
    """One slide of the cohort, with every path resolved."""

    id: str
    path: Path
    mask: Optional[Path] = None
    mpp: Optional[float] = None


class Cohort(BaseModel):
    source: Path
    name: str
    output: Path
    slides: list[SlideEntry]
    model: ModelSpec
    processing: ProcessingSpec
    cluster: ClusterSpec


def load_cohort(path: str | Path) -> Cohort:
    """Read and validate a cohort file; raise CohortError naming the file and the field."""
    source = Path(path).resolve()
    if not source.is_file():
        raise CohortError(f"{path}: cohort file not found")
    try:
        raw = yaml.safe_load(source.read_text())
    except yaml.YAMLError as err:
        raise CohortError(f"{path}: not valid YAML: {first_line(err)}") from None
    if not isinstance(raw, dict):
        raise CohortError(f"{path}: expected a mapping with name, output, slides, model, processing, cluster")
    parsed = _validate(CohortFile, raw, path)
    base = source.parent
    slides = _slide_entries(parsed.slides, base, path)
    model = parsed.model
    if model.kind == "cerberus":
        if model.weights is None:
            raise CohortError(f"{path}: model.weights: required for model kind 'cerberus' (folder with weights.tar + settings.yml)")
        weights = _resolve(base, model.weights)
        if not weights.is_dir():
            raise CohortError(f"{path}: model.weights: folder not found: {weights}")
        model = model.model_copy(update={"weights": weights})
    if parsed.processing.tissue_mask == "given":
        missing = [s.id for s in slides if s.mask is None]
        if missing:
            raise CohortError(f"{path}: processing.tissue_mask is 'given' but slide {missing[0]!r} has no mask")
    return Cohort(
        source=source,
        name=parsed.name,
        output=_resolve(base, parsed.output),
        slides=slides,
        model=model,
        processing=parsed.processing,
        cluster=_cluster_paths(parsed.cluster, base),
    )


def _cluster_paths(cluster: ClusterSpec, base: Path) -> ClusterSpec:
    """Files the cluster section names are relative to the cohort file, like every other path."""
    if cluster.address is not None and cluster.address.ca_file is not None:
        tls = {k: _resolve(base, getattr(cluster.address, k)) for k in ("ca_file", "cert", "key")}
        cluster = cluster.model_copy(update={"address": cluster.address.model_copy(update=tls)})
    if cluster.slurm is not None and cluster.slurm.log_directory and not cluster.slurm.log_directory.startswith("$"):
        logs = str(_resolve(base, Path(cluster.slurm.log_directory)))
        cluster = cluster.model_copy(update={"slurm": cluster.slurm.model_copy(update={"log_directory": logs})})
    return cluster


def _validate(model: type[BaseModel], raw: Any, path: str | Path, prefix: str = "") -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise CohortError(f"{path}: {prefix}{field}: {first['msg']}{more}") from None


def _resolve(base: Path, value: Path) -> Path:
    return (base / value.expanduser()).resolve()


def _slide_entries(raw: Any, base: Path, path: str | Path) -> list[SlideEntry]:
    if isinstance(raw, list):
        specs = [_validate(SlideSpec, item, path, f"slides.{i}.") for i, item in enumerate(raw)]
    elif isinstance(raw, dict) and "glob" in raw:
        specs = _globbed(_validate(SlideGlob, raw, path, "slides."), base, path)
    elif isinstance(raw, dict) and "manifest" in raw:
        specs = _manifest(_validate(SlideManifest, raw, path, "slides."), base, path)
    else:
        raise CohortError(f"{path}: slides: expected a list of slides, {{glob: ...}} or {{manifest: ...}}")
    if not specs:
        raise CohortError(f"{path}: slides: no slides listed or matched")
    entries: list[SlideEntry] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        slide = _resolve(base, spec.path)
        slide_id = spec.id if spec.id is not None else slide.stem
        if not SAFE_ID.match(slide_id) or slide_id in {".", ".."}:
            raise CohortError(
                f"{path}: slides.{i}.id: {slide_id!r} is not a safe folder name "
                "(letters, digits, '.', '_', '-'; no path separators)"
            )
        if slide_id in seen:
            raise CohortError(f"{path}: slides.{i}.id: duplicate slide id {slide_id!r}")
        seen.add(slide_id)
        if not slide.is_file():
            raise CohortError(f"{path}: slides.{i}.path: slide file not found: {slide}")
        mask = _resolve(base, spec.mask) if spec.mask is not None else None
        if mask is not None and not mask.is_file():
            raise CohortError(f"{path}: slides.{i}.mask: mask file not found: {mask}")
        entries.append(SlideEntry(id=slide_id, path=slide, mask=mask, mpp=spec.mpp))
    return entries


def _globbed(spec: SlideGlob, base: Path, path: str | Path) -> list[SlideSpec]:
    pattern = spec.glob if Path(spec.glob).is_absolute() else str(base / spec.glob)
    found = sorted(globlib.glob(pattern, recursive=True))
    if not found:
        raise CohortError(f"{path}: slides.glob: no file matches {spec.glob!r}")
    out = []
    for slide in map(Path, found):
        try:
            mask = Path(spec.masks.format(stem=slide.stem)) if spec.masks else None
        except (KeyError, IndexError, ValueError):
            raise CohortError(f"{path}: slides.masks: {spec.masks!r}: the only placeholder is {{stem}}") from None
        out.append(SlideSpec(path=slide, mask=mask, mpp=spec.mpp))
    return out


def _manifest(spec: SlideManifest, base: Path, path: str | Path) -> list[SlideSpec]:
    manifest = _resolve(base, spec.manifest)
    if not manifest.is_file():
        raise CohortError(f"{path}: slides.manifest: file not found: {manifest}")
    try:
        # utf-8-sig: spreadsheet programs start their "CSV UTF-8" with a byte-order mark.
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except UnicodeDecodeError:
        raise CohortError(f"{path}: slides.manifest: {manifest} is not UTF-8 text") from None
    out = []
    for i, row in enumerate(rows):
        row = {k.strip(): v.strip() for k, v in row.items() if k and v and v.strip()}
        # Manifest paths are relative to the manifest itself.
        if "path" in row:
            row["path"] = str(_resolve(manifest.parent, Path(row["path"])))
        if "mask" in row:
            row["mask"] = str(_resolve(manifest.parent, Path(row["mask"])))
        out.append(_validate(SlideSpec, row, manifest, f"row {i + 2}: "))
    return out
