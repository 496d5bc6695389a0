"""Reading a cohort file: every section validated, and checked against the others, before anything
touches the output folder; every problem is reported at once, one line each."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cerberus_batch.cluster.spec import ClusterSpec
from cerberus_batch.errors import CohortError
from cerberus_batch.pipeline.config.problems import Problems, read_yaml, valid_or_none
from cerberus_batch.pipeline.config.schema import (
    CHUNK_MAPS_BYTES, Cohort, CohortFile, ModelSpec, ProcessingSpec, SlideEntry, chunk_bytes_per_px, largest_chunk,
)
from cerberus_batch.pipeline.config.slide_list import slide_entries
from cerberus_batch.slides.location import Location


def load_cohort(path: str | Path, *, inputs_here: bool = True) -> Cohort:
    """Read and validate a cohort file; raise CohortError listing every problem, one per line.

    `inputs_here=False` (`cluster-spec`, run on a laptop for a cluster) neither looks for the slides
    nor the model folder, and lists no slides: they are checked where the run starts.
    """
    source = Path(path).resolve()
    if not source.is_file():
        raise CohortError(f"{path}: cohort file not found")
    raw, lines = read_yaml(source, str(path))
    if not isinstance(raw, dict):
        raise CohortError(f"{path}: expected a mapping with name, output, slides, model, processing, cluster")
    report = Problems(str(path), lines)
    parsed = report.validate(CohortFile, raw)
    base = source.parent
    options = parsed.storage_options if parsed is not None else {}
    slides = slide_entries(raw["slides"], base, report, options) if "slides" in raw and inputs_here else []
    # Where one section is invalid, the checks below still run on the sections that are valid.
    model = parsed.model if parsed is not None else valid_or_none(ModelSpec, raw.get("model", {}))
    processing = parsed.processing if parsed is not None else valid_or_none(ProcessingSpec, raw.get("processing", {}))
    if model is not None:
        model = _checked_model(model, base, inputs_here, report)
    if processing is not None:
        _check_processing(processing, model, slides, report)
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


def _checked_model(model: ModelSpec, base: Path, inputs_here: bool, report: Problems) -> ModelSpec:
    """`model` with its weights folder resolved; what its kind cannot take goes to `report`."""
    if model.kind == "cerberus":
        if model.weights is None:
            from cerberus_batch.model.check import WHERE_TO_GET  # loads torch: on this refusal's path only

            report.at(("model", "weights"), f"required for model kind 'cerberus': {WHERE_TO_GET}; or model kind 'stain' (no weights)")
        else:
            weights = _resolve(base, model.weights)
            if inputs_here and not weights.is_dir():
                report.at(("model", "weights"), f"folder not found: {weights}")
            model = model.model_copy(update={"weights": weights})
    if model.kind == "stain" and "heads" in model.model_fields_set:
        from cerberus_batch.model.naming import spellings_of
        from cerberus_batch.model.stain import StainPredictor

        has = spellings_of(StainPredictor.heads)
        if set(model.heads) != set(has):  # it always runs all of its heads and has no others
            report.at(("model", "heads"), f"the stain model always computes {', '.join(has)} and has no other heads; "
                      f"remove heads, or use model kind 'cerberus' for {', '.join(h for h in model.heads if h not in has) or 'a subset'}")
    return model


def _check_processing(processing: ProcessingSpec, model: Optional[ModelSpec], slides: list[SlideEntry], report: Problems) -> None:
    """Report what the processing section asks that the slides, the model or a worker's memory cannot give."""
    if processing.tissue_mask == "given":
        missing = [s.id for s in slides if s.mask is None]
        if missing:
            report.at(("processing", "tissue_mask"), f"'given', but these slides have no mask: {', '.join(map(repr, missing))}")
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
