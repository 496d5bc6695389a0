"""The cohort file: what users write, validated before anything touches the output folder.

Every problem is reported at once, one line each: `file:line: field: what is wrong` (no line where
the field is missing from the file altogether).
"""

from __future__ import annotations

import csv
import glob as globlib
import io
import math
import re
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from cerberus_batch.cluster.spec import ClusterSpec, Strict
from cerberus_batch.errors import CohortError, first_line
from cerberus_batch.grid import CELL
from cerberus_batch.slides.location import Location, remote_cause
from cerberus_batch.slides.slide import Slide, open_slide
from cerberus_batch.slides.sources import PLAUSIBLE_MPP, Reader
from cerberus_batch.storage.maps import map_specs
from cerberus_batch.vocabulary import HEAD_MAPS, model_class_names

# \A and \Z, not ^ and $: `$` also matches before a final newline, and "abc\n" is no folder name.
SAFE_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]*\Z")
SLIDE_FIELDS = ("path", "id", "mask")  # the SlideSpec fields the slide checks name
# A batch never holds more passes than fit in memory anyway (`model.memory`); even patch mode's 448-px
# passes, the smallest, fill the largest accelerators (~140 GB) at several hundred, so more is a typo.
MAX_BATCH_SIZE = 1024
# One chunk's stored maps (uint8 or float16); a chunk task also holds the model's float32 outputs for the
# whole chunk (about 10x more) and its input, so this keeps a chunk task within a few GB of a worker.
CHUNK_MAPS_BYTES = 256 * 2**20


def microscope_mpp(value: float) -> float:
    """`value` (µm/px), or ValueError where no microscope records it: a level-0 resolution outside
    that range is a wrong override, and processing outside it is interpolation beyond any scan or
    coarser than a nucleus (Cerberus was trained at 0.5 µm/px)."""
    low, high = PLAUSIBLE_MPP
    if not low <= value <= high:  # also refuses nan
        raise ValueError(f"{value:g} µm/px is outside {low:g}–{high:g} µm/px, the resolutions microscopes record")
    return value


Mpp = Annotated[float, AfterValidator(microscope_mpp)]


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
    kind: Literal["cerberus", "stain"] = "cerberus"
    weights: Optional[Path] = None  # folder with weights.tar + settings.yml
    heads: list[Literal["nuclei", "gland", "lumen", "tissue"]] = ["nuclei", "gland", "lumen", "tissue"]
    device: Optional[str] = None  # e.g. "cuda", "cpu"; default: CUDA when present
    amp: Optional[Literal["bf16", "fp16"]] = None  # the speed option (CPU: bf16 only); maps differ from fp32 Cerberus


class ProcessingSpec(Strict):
    mpp: Mpp = 0.5
    chunk: PositiveInt = 2016  # output px per chunk side
    mode: Literal["tile", "patch"] = "tile"
    tile: PositiveInt = 1008  # output px per forward pass in tile mode
    batch_size: int = Field(8, ge=1, le=MAX_BATCH_SIZE)
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


def load_cohort(path: str | Path, *, inputs_here: bool = True) -> Cohort:
    """Read and validate a cohort file; raise CohortError listing every problem, one per line.

    `inputs_here=False` (`cluster-spec`, run on a laptop for a cluster) neither looks for the slides
    nor the model folder, and lists no slides: they are checked where the run starts.
    """
    source = Path(path).resolve()
    if not source.is_file():
        raise CohortError(f"{path}: cohort file not found")
    raw, lines = _read_yaml(source, str(path))
    if not isinstance(raw, dict):
        raise CohortError(f"{path}: expected a mapping with name, output, slides, model, processing, cluster")
    report = _Problems(str(path), lines)
    parsed = report.validate(CohortFile, raw)
    base = source.parent
    options = parsed.storage_options if parsed is not None else {}
    slides = _slide_entries(raw["slides"], base, report, options) if "slides" in raw and inputs_here else []
    # Where one section is invalid, the checks below still run on the sections that are valid.
    model = parsed.model if parsed is not None else _valid(ModelSpec, raw.get("model", {}))
    processing = parsed.processing if parsed is not None else _valid(ProcessingSpec, raw.get("processing", {}))
    if model is not None and model.kind == "cerberus":
        if model.weights is None:
            from cerberus_batch.model.check import WHERE_TO_GET  # loads torch: on this refusal's path only

            report.at(("model", "weights"), f"required for model kind 'cerberus': {WHERE_TO_GET}; or model kind 'stain' (no weights)")
        else:
            weights = _resolve(base, model.weights)
            if inputs_here and not weights.is_dir():
                report.at(("model", "weights"), f"folder not found: {weights}")
            model = model.model_copy(update={"weights": weights})
    if model is not None and model.kind == "stain" and "heads" in model.model_fields_set:
        from cerberus_batch.model.naming import spellings_of
        from cerberus_batch.model.stain import StainPredictor

        has = spellings_of(StainPredictor.heads)
        if set(model.heads) != set(has):  # it always runs all of its heads and has no others
            report.at(("model", "heads"), f"the stain model always computes {', '.join(has)} and has no other heads; "
                      f"remove heads, or use model kind 'cerberus' for {', '.join(h for h in model.heads if h not in has) or 'a subset'}")
    if processing is not None and processing.tissue_mask == "given":
        missing = [s.id for s in slides if s.mask is None]
        if missing:
            report.at(("processing", "tissue_mask"), f"'given', but these slides have no mask: {', '.join(map(repr, missing))}")
    if processing is not None:
        # Bounded here, not by a field, as the bound depends on the dtype. A pass never covers more than a chunk.
        most = largest_chunk(processing.dtype)
        too_big = [field for field in ("chunk", "tile") if getattr(processing, field) > most]
        for field in too_big:
            report.at(("processing", field), f"{getattr(processing, field)} px is more than {most} px, the largest chunk "
                      f"whose maps ({chunk_bytes_per_px(processing.dtype):.2f} B per px as {processing.dtype}) fit in "
                      f"{CHUNK_MAPS_BYTES // 2**20} MiB of a worker's memory")
        if not too_big and model is not None and model.kind == "cerberus" and processing.mode == "tile":
            if processing.chunk % processing.tile:  # Cerberus tiles lie on a slide-wide grid, so a chunk holds whole tiles
                report.at(("processing", "chunk"), f"{processing.chunk} is not a multiple of processing.tile ({processing.tile})")
    if report.found:
        raise CohortError(report.message())
    return Cohort(
        source=source,
        name=parsed.name,
        output=_resolve(base, parsed.output),
        slides=[slide.model_copy(update={"reader": slide.reader or processing.reader}) for slide in slides],
        model=model,
        processing=processing,
        cluster=_cluster_paths(parsed.cluster, base),
        manifest=Location.parse(parsed.slides["manifest"], base, options) if isinstance(parsed.slides, dict) and "manifest" in parsed.slides else None,
    )


def _read_yaml(source: Path, path: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    """The document, and the line (from 1) of each mapping key and list item by its key path."""
    try:
        loader = yaml.SafeLoader(source.read_bytes())  # bytes: PyYAML finds the encoding, and says when it is none
        try:
            node = loader.get_single_node()
            raw = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        # The context's line too: an unclosed bracket is found only where the file ends.
        context = f"{err.context} (line {err.context_mark.line + 1})" if err.context and err.context_mark else err.context
        what = ", ".join(part for part in (context, err.problem) if part)
        raise CohortError(f"{path}:{mark.line + 1}: not valid YAML: {what}" if mark else f"{path}: not valid YAML: {what}") from None
    except yaml.YAMLError as err:
        raise CohortError(f"{path}: not valid YAML: {first_line(err)}") from None
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _record_lines(node, (), lines, set())
    return raw, lines


def _record_lines(node: yaml.Node, at: tuple[str, ...], lines: dict[tuple[str, ...], int], seen: set[int]) -> None:
    # Walked after construction, so merge keys (`<<: *defaults`) are already expanded into their mappings.
    # `seen`: an alias reuses its anchor's node, and a recursive alias (`a: &x [*x]`) would never end.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines[at + (key.value,)] = key.start_mark.line + 1
                _record_lines(value, at + (key.value,), lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[at + (str(i),)] = item.start_mark.line + 1
            _record_lines(item, at + (str(i),), lines, seen)


class _Problems:
    """Every problem found in one cohort file (and the manifest it names), one line each."""

    def __init__(self, path: str, lines: dict[tuple[str, ...], int]):
        self.path = path
        self.lines = lines
        self.found: list[tuple[str, Optional[int], str]] = []  # (file, line, "field: what is wrong")

    def add(self, file: str, line: Optional[int], field: str, text: str) -> None:
        self.found.append((file, line, f"{field}: {text}"))

    def line(self, loc: tuple) -> Optional[int]:
        """The line of the field at `loc`, or of its nearest parent written in the file."""
        keys = tuple(map(str, loc))
        while keys and keys not in self.lines:
            keys = keys[:-1]
        return self.lines.get(keys)

    def at(self, loc: tuple, text: str) -> None:
        """A problem with the cohort file's field at `loc`."""
        self.add(self.path, self.line(loc), ".".join(map(str, loc)), text)

    def validate(self, model: type[BaseModel], raw: Any, at: tuple = ()) -> Any:
        """`raw` (found at `at` in the cohort file) as `model`, or None after adding its problems."""
        try:
            return model.model_validate(raw)
        except ValidationError as err:
            for loc, text in _explained(err, model):
                self.at(at + loc, text)
            return None

    def message(self) -> str:
        # The cohort file's problems first, then the manifest's; each file's in line order.
        ordered = sorted(self.found, key=lambda p: (p[0] != self.path, p[0], p[1] or 0))
        return "\n".join(f"{file}:{line}: {text}" if line else f"{file}: {text}" for file, line, text in ordered)


# Pydantic's wording of the errors numbers get, as ours; `{}` is the value given.
NUMBER_ERRORS = {
    "greater_than": "must be more than {gt}, got {}",
    "greater_than_equal": "must be at least {ge}, got {}",
    "less_than": "must be less than {lt}, got {}",
    "less_than_equal": "must be at most {le}, got {}",
    "int_parsing": "must be a whole number, got {!r}",
    "int_from_float": "must be a whole number, got {}",
    "int_type": "must be a whole number, got {!r}",
    "float_parsing": "must be a number, got {!r}",
    "float_type": "must be a number, got {!r}",
}


def _explained(err: ValidationError, model: type[BaseModel]) -> list[tuple[tuple, str]]:
    """Each of pydantic's errors as (location, one-line text); an unknown key names the nearest valid one."""
    out = []
    for error in err.errors():
        loc, text = error["loc"], error["msg"]
        if error["type"] == "value_error":  # our own validators' text, without pydantic's "Value error, "
            text = str(error["ctx"]["error"])
        elif error["type"] in NUMBER_ERRORS:
            text = NUMBER_ERRORS[error["type"]].format(error["input"], **error.get("ctx", {}))
        elif error["type"] == "extra_forbidden":
            valid = _keys_at(model, loc[:-1])
            near = get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.7)  # 0.6 offers cluster for colour
            hint = f"; did you mean {near[0]}?" if near else f"; valid keys: {', '.join(valid)}" if valid else ""
            text = f"unknown key{hint}"
        out.append((loc, text))
    return out


def _keys_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the mapping at `loc` accepts, following the field types down from `model`."""
    kind: Any = model
    for part in loc:
        kind = _unoptional(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel) and part in kind.model_fields:
            kind = kind.model_fields[part].annotation
        elif get_origin(kind) in (list, dict):
            kind = get_args(kind)[-1]  # the item type, or the value type
        else:
            return []
    kind = _unoptional(kind)
    return list(kind.model_fields) if isinstance(kind, type) and issubclass(kind, BaseModel) else []


def _unoptional(kind: Any) -> Any:
    present = [arg for arg in get_args(kind) if arg is not type(None)]
    return present[0] if get_origin(kind) in (Union, UnionType) and len(present) == 1 else kind


def _valid(model: type[BaseModel], raw: Any) -> Any:
    """`raw` as `model`, or None; for a section whose problems validating the whole file has reported."""
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None


def _cluster_paths(cluster: ClusterSpec, base: Path) -> ClusterSpec:
    """Files the cluster section names are relative to the cohort file, like every other path."""
    if cluster.address is not None and cluster.address.ca_file is not None:
        tls = {k: _resolve(base, getattr(cluster.address, k)) for k in ("ca_file", "cert", "key")}
        cluster = cluster.model_copy(update={"address": cluster.address.model_copy(update=tls)})
    if cluster.slurm is not None and cluster.slurm.log_directory and not cluster.slurm.log_directory.startswith("$"):
        logs = str(_resolve(base, Path(cluster.slurm.log_directory)))
        cluster = cluster.model_copy(update={"slurm": cluster.slurm.model_copy(update={"log_directory": logs})})
    return cluster


def _resolve(base: Path, value: Path) -> Path:
    return (base / value.expanduser()).resolve()


@dataclass
class _Written:
    """Where a slide is written, for its problems: the file, and each field's line and name there."""

    file: str
    spots: dict[str, tuple[Optional[int], str]]  # SlideSpec field -> (line, field as the file names it)
    mpp_fix: str  # what gives a slide written here an mpp

    def problem(self, report: _Problems, field: str, text: str) -> None:
        report.add(self.file, *self.spots[field], text)


def _slide_entries(raw: Any, base: Path, report: _Problems, options: dict[str, Any]) -> list[SlideEntry]:
    """Every slide that validates, its paths resolved; problems with any of them go to `report`.

    Remote slides and masks are looked for where they are read (one line each, the rest of the cohort runs)."""
    entries: list[SlideEntry] = []
    first_with: dict[str, Location] = {}  # slide id -> the slide that has it
    for spec, written in _slide_specs(raw, base, report, options):
        try:
            slide = Location.parse(spec.path, base, options)
            mask = Location.parse(spec.mask, base, options) if spec.mask is not None else None
        except ValueError as err:
            written.problem(report, "path", str(err))
            continue
        slide_id = spec.id if spec.id is not None else slide.stem
        id_field = "id" if spec.id is not None else "path"
        if not SAFE_ID.match(slide_id):  # also refuses "." and "..": the first character is a letter or digit
            named = "" if spec.id is not None else f" (from the file name of {slide})"
            written.problem(report, id_field, f"{slide_id!r} is not a safe folder name (letters, digits, '.', '_', '-'; no path separators){named}")
        elif slide_id in first_with:
            written.problem(report, id_field, f"duplicate slide id {slide_id!r} (also the id of {first_with[slide_id]})")
        else:
            first_with[slide_id] = slide
        if not slide.remote and not slide.local.exists():  # a folder is a DICOM slide
            written.problem(report, "path", f"slide file not found: {slide}")
        if mask is not None and not mask.remote and not mask.local.is_file():
            written.problem(report, "mask", f"mask file not found: {mask}")
        entries.append(SlideEntry(id=slide_id, path=slide, mask=mask, mpp=spec.mpp, mpp_override=spec.mpp_override,
                                  mpp_fix=written.mpp_fix, reader=spec.reader))
    return entries


def _slide_specs(raw: Any, base: Path, report: _Problems, options: dict[str, Any]) -> list[tuple[SlideSpec, _Written]]:
    if isinstance(raw, list):
        if not raw:
            report.at(("slides",), "no slides listed")
        out = []
        for i, item in enumerate(raw):
            spec = report.validate(SlideSpec, item, ("slides", i))
            if spec is not None:
                spots = {f: (report.line(("slides", i, f)), f"slides.{i}.{f}") for f in SLIDE_FIELDS}
                out.append((spec, _Written(report.path, spots, f"set `mpp:` on slides.{i} in {report.path}")))
        return out
    if isinstance(raw, dict) and "glob" in raw:
        spec = report.validate(SlideGlob, raw, ("slides",))
        return _globbed(spec, base, report, options) if spec is not None else []
    if isinstance(raw, dict) and "manifest" in raw:
        spec = report.validate(SlideManifest, raw, ("slides",))
        return _manifest(spec, base, report, options) if spec is not None else []
    report.at(("slides",), "expected a list of slides, {glob: ...} or {manifest: ...}")
    return []


def _globbed(spec: SlideGlob, base: Path, report: _Problems, options: dict[str, Any]) -> list[tuple[SlideSpec, _Written]]:
    try:
        found = _matches(spec.glob, base, options)
    except Exception as err:  # a bucket prefix: the store's or the network's error
        report.at(("slides", "glob"), f"cannot list {Location.parse(spec.glob)}: {remote_cause(err) or first_line(err, typed=True)}")
        return []
    if not found:
        report.at(("slides", "glob"), f"no file matches {spec.glob!r}")
        return []
    glob_line = report.line(("slides", "glob"))
    written = _Written(report.path, {
        "path": (glob_line, "slides.glob"), "id": (glob_line, "slides.glob"),
        "mask": (report.line(("slides", "masks")), "slides.masks"),
    }, f"set `mpp:` beside `glob:` in {report.path}")
    out = []
    for slide in found:
        try:
            mask = spec.masks.format(stem=slide.stem) if spec.masks else None
        except (KeyError, IndexError, ValueError):
            report.at(("slides", "masks"), f"{spec.masks!r}: the only placeholder is {{stem}}")
            return []
        out.append((SlideSpec(path=slide.address, mask=mask, mpp=spec.mpp, mpp_override=spec.mpp_override, reader=spec.reader), written))
    return out


def _matches(pattern: str, base: Path, options: dict[str, Any]) -> list[Location]:
    """The slides a glob names: local files, or the objects under a bucket prefix."""
    if "://" in pattern:
        return Location.parse(pattern, storage_options=options).matches()
    pattern = pattern if Path(pattern).is_absolute() else str(base / pattern)
    return [Location.parse(found) for found in sorted(globlib.glob(pattern, recursive=True))]


def _manifest(spec: SlideManifest, base: Path, report: _Problems, options: dict[str, Any]) -> list[tuple[SlideSpec, _Written]]:
    manifest = Location.parse(spec.manifest, base, options)
    if not manifest.remote and not manifest.local.is_file():
        report.at(("slides", "manifest"), f"file not found: {manifest}")
        return []
    try:
        # utf-8-sig: spreadsheet programs start their "CSV UTF-8" with a byte-order mark.
        reader = csv.DictReader(io.StringIO(manifest.read_bytes().decode("utf-8-sig"), newline=""))
        rows = [(reader.line_num, row) for row in reader]  # line_num: the row's (last) line
    except UnicodeDecodeError:
        report.at(("slides", "manifest"), f"{manifest} is not UTF-8 text")
        return []
    except Exception as err:  # a remote manifest: the store's or the network's error
        report.at(("slides", "manifest"), f"cannot read {manifest}: {remote_cause(err) or first_line(err, typed=True)}")
        return []
    if not rows:
        report.at(("slides", "manifest"), f"{manifest} lists no slides")
    out = []
    for line, row in rows:
        row = {k.strip(): v.strip() for k, v in row.items() if k and v and v.strip()}
        # Manifest paths are relative to the manifest itself.
        for field in ("path", "mask"):
            if field in row and "://" not in row[field]:  # a URL stands as written (its protocol is checked later)
                row[field] = manifest.join(row[field]).address
        try:
            written = _Written(str(manifest), {f: (line, f) for f in SLIDE_FIELDS}, f"fill its `mpp` column in {manifest}")
            out.append((SlideSpec.model_validate(row), written))
        except ValidationError as err:
            for loc, text in _explained(err, SlideSpec):
                report.add(str(manifest), line, ".".join(map(str, loc)), text)
    return out
