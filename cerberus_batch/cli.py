"""The `cerberus-batch` command line."""

from __future__ import annotations

import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, get_args

import click

from cerberus_batch import __version__
from cerberus_batch.defaults import BATCH_SIZE, CHUNK, PROCESSING_MPP
from cerberus_batch.errors import (
    CerberusBatchError, CheckpointError, ClusterError, OutputError, RunMismatch, SlideError, failure_line, first_line,
)
from cerberus_batch.model import InferenceOptions, factory
from cerberus_batch.slides.sources import Reader


@contextmanager
def refusals_shown(log: Path | None = None, subject: str | Path = "") -> Iterator[None]:
    """Our refusals and the system's errors (naming their file, else `subject`) leave as one line; anything
    else as a bug: one line saying so, its traceback written to `log` (None: stderr)."""
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):  # click's own; Exit and Abort are RuntimeErrors
        raise
    except CerberusBatchError as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:
        raise click.ClickException(f"{err.filename or subject}: {err.strerror or first_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - a bug: shown as one, never as the user's mistake
        raise click.ClickException(f"{failure_line(err)}; its traceback is {_traceback_to(log, err)}") from None


def _traceback_to(log: Path | None, err: Exception) -> str:
    """Writes the error's traceback to `log` (on stderr if none, or if it cannot be written); says where it went."""
    text = "".join(traceback.format_exception(err))
    if log is not None:
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a", encoding="utf-8") as file:
                file.write(text)
            return f"in {log}"
        except OSError:
            pass
    click.echo(text, err=True, nl=False)
    return "above"


class Commands(click.Group):
    """Every command's refusals print as one line; a bug prints as one, its traceback on stderr (`run`: in its log)."""

    def invoke(self, ctx: click.Context) -> Any:
        with refusals_shown():
            return super().invoke(ctx)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cerberus-batch")
def main() -> None:
    """Run the Cerberus histology model over cohorts of whole-slide images."""


def _cohort(path: str, *, inputs_here: bool = True):
    from cerberus_batch.pipeline.config import load_cohort

    return load_cohort(path, inputs_here=inputs_here)


INTERRUPTED = "Interrupted: rerun the same command to resume."


@main.command()
@click.argument("cohort_file", type=click.Path(dir_okay=False))
@click.option("--fresh", is_flag=True, help="Recompute everything, discarding maps made with other settings.")
@click.option("--allow-device-change", is_flag=True,
              help="Continue maps made with other numerics (e.g. CPU fp32 maps continued on a GPU in bf16).")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def run(cohort_file: str, fresh: bool, allow_device_change: bool, no_progress: bool) -> None:
    """Run a cohort: slides → chunk tasks → maps (and tables) under the cohort's output folder."""
    cohort = _cohort(cohort_file)
    from cerberus_batch.pipeline.run import run_cohort
    from cerberus_batch.storage.layout import OutputLayout

    try:
        with refusals_shown(OutputLayout(cohort.output).run_log, subject=cohort.output):
            report = run_cohort(cohort, fresh=fresh, allow_device_change=allow_device_change, show_progress=not no_progress)
    except KeyboardInterrupt:  # before the slides started (the cluster starting, the model loading): nothing to report
        click.echo(INTERRUPTED, err=True)
        raise SystemExit(130) from None
    slides = report.slides.values()
    done, failed = sum(s.status == "done" for s in slides), sum(s.status == "failed" for s in slides)
    click.echo(f"{done}/{len(slides)} slides done{f', {failed} failed' if failed else ''}; report: {OutputLayout(cohort.output).run_report}")
    chunks, tables = sum(s.chunks_skipped for s in slides), sum(s.tables_skipped for s in slides)
    if chunks or tables:
        click.echo(f"Resumed: {chunks} of {sum(s.chunks for s in slides)} chunks and {tables} slides' tables were done by an earlier run")
    for slide_id, outcome in report.slides.items():
        if outcome.note:  # failures were reported once, as they happened
            click.echo(f"NOTE {slide_id}: {outcome.note}", err=True)
    if report.status == "interrupted":
        click.echo(INTERRUPTED, err=True)
        raise SystemExit(130)
    if report.status != "ok":
        raise SystemExit(1)


@main.command()
@click.argument("cohort_file", type=click.Path(dir_okay=False))
def validate(cohort_file: str) -> None:
    """Check a cohort file and print its plan (slides, chunks, tissue, work) without running."""
    from rich.console import Console
    from rich.table import Table

    from cerberus_batch.grid import pass_size
    from cerberus_batch.pipeline.plan import NO_TISSUE, plan_cohort
    from cerberus_batch.pipeline.run import cohort_inputs
    from cerberus_batch.pipeline.work import checked_predictor, fingerprint
    from cerberus_batch.storage.ledger import refuse_mismatch
    from cerberus_batch.storage.output_folder import check_writable, refuse_inputs_inside

    cohort = _cohort(cohort_file)
    table = Table(title=f"{cohort.name}: {len(cohort.slides)} slides → {cohort.output}")
    for column in ("slide", "level-0 mpp", "size (proc px)", "tissue mm²", "chunks", "cells", "input Mpx", "input px / tissue px", "problem"):
        table.add_column(column)
    # The stain model reads whole chunks.
    tile = None if cohort.model.kind == "stain" else pass_size(cohort.processing.mode, cohort.processing.tile)
    problems = []
    for slide, plan, error, info in plan_cohort(cohort):
        mpp = f"{sum(info.mpp) / 2:.4f} ({info.mpp_source})" if info and info.mpp else "none" if info else ""
        if error:
            problems.append(f"{slide.id}: {error}")
            table.add_row(slide.id, mpp, "", "", "", "", "", "", "cannot be planned (below)")
            continue
        h, w = plan.shape
        table.add_row(
            slide.id, mpp, f"{w}×{h}", f"{plan.tissue_mm2:.2f}", str(len(plan.chunks)), str(plan.cells),
            f"{plan.input_px(tile) / 1e6:.1f}", f"{plan.input_per_tissue_px(tile):.2f}", "" if plan.chunks else NO_TISSUE,
        )
    Console().print(table)
    try:
        check_writable(cohort.output)
        refuse_inputs_inside(cohort.output, cohort_inputs(cohort))
    except OutputError as err:
        problems.append(f"output: {err}")
    try:  # as `run` loads it before any slide: what `run` refuses is named here
        predictor = checked_predictor(cohort)
    except CheckpointError as err:
        problems.append(f"model: {err}")
    else:
        try:  # as `run` refuses it before the cluster starts
            refuse_mismatch(cohort.output, fingerprint(cohort.model, cohort.processing, predictor, None))
        except RunMismatch as err:
            problems.append(f"output: {err}")
    for problem in problems:
        click.echo(f"PROBLEM {problem}", err=True)
    if problems:
        raise SystemExit(1)


@main.command()
@click.argument("output", type=click.Path(file_okay=False, exists=True))
def status(output: str) -> None:
    """Per-slide progress of a run, from its ledger and report."""
    from cerberus_batch.pipeline.status import print_status

    print_status(output)


@main.command()
@click.argument("output", type=click.Path(file_okay=False, exists=True))
@click.option("--single-file", is_flag=True,
              help="Embed the QC pictures, for a report that travels alone (by default it refers to them beside it).")
def report(output: str, single_file: bool) -> None:
    """Rebuild the cohort report OUT/report.html from what the run wrote (it opens offline)."""
    from cerberus_batch.cohort_report import CohortReport

    target = CohortReport(output, single_file=single_file).write()
    click.echo(f"{target}: {target.stat().st_size:,} bytes")


@main.command("check-model")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--reference", type=click.Path(dir_okay=False),
              help="The parity fixture's forward_reference.npz (tests/data/): also check the folder reproduces its logits.")
def check_model(model_dir: str, reference: str | None) -> None:
    """Load a Cerberus model folder as a run would and print its heads, classes, identity and parity status."""
    from cerberus_batch.model.check import check_model as checked

    click.echo("\n".join(checked(model_dir, reference).lines()))


@main.command("cluster-spec")
@click.argument("cohort_file", type=click.Path(dir_okay=False))
def cluster_spec(cohort_file: str) -> None:
    """Print what the cohort's cluster would submit: the SLURM job script or the Kubernetes manifests."""
    from cerberus_batch.cluster import submission_preview

    cohort = _cohort(cohort_file, inputs_here=False)  # slides and model live on the cluster, not here
    try:
        click.echo(submission_preview(cohort.cluster), nl=False)
    except ClusterError as err:
        raise click.ClickException(f"{cohort_file}: cluster: {err}") from None


def _mpp(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A resolution option, bounded like the cohort file's."""
    from cerberus_batch.pipeline.config import microscope_mpp

    try:
        return value if value is None else microscope_mpp(value)
    except ValueError as err:  # a pydantic validator's, which says what it refused
        raise click.BadParameter(str(err)) from None


MPP_OVERRIDE = click.option("--mpp-override", type=float, callback=_mpp, help="Level-0 µm/px, for slides without (or with wrong) metadata.")


@main.command()
@click.argument("slide")  # a file, a DICOM folder or a URL
@MPP_OVERRIDE
@click.option("--reader", type=click.Choice(get_args(Reader)), default="auto", show_default=True,
              help="Who reads the slide: auto (tiffslide for TIFF, DICOM for a folder or DICOMweb series, else OpenSlide).")
@click.option("--target-mpp", type=float, default=PROCESSING_MPP, show_default=True, callback=_mpp, help="Processing resolution, µm/px.")
@click.option("--chunk", type=int, default=CHUNK, show_default=True, help="Chunk side in processing px (multiple of 144).")
@click.option("--mask", "mask_source", default="auto", show_default=True, help='"auto", "none" or a mask image.')
def inspect(slide: str, mpp_override: float | None, reader: Reader, target_mpp: float, chunk: int, mask_source: str) -> None:
    """Print a slide's metadata, levels, processing resolution, tissue and chunk plan."""
    from rich.console import Console
    from rich.table import Table

    from cerberus_batch.slides import open_slide, plan_chunks, tissue_mask
    from cerberus_batch.slides.location import Location
    from cerberus_batch.slides.plan import check_extent
    from cerberus_batch.slides.sources import source_identity

    try:
        location = Location.parse(slide)
    except ValueError as err:  # the parser's, as a cohort's slides are refused
        raise SlideError(slide, str(err)) from None
    identity = source_identity(location, reader)
    with open_slide(location, mpp=mpp_override, reader=reader) as opened:
        view = opened.at_mpp(target_mpp)
        check_extent(view)
        mask = tissue_mask(view, mask_source)
        plan = plan_chunks(view, mask, chunk=chunk, slide_id=location.stem)
    info = opened.info
    table = Table(title=location.shown, show_header=False)  # the address without credentials
    rows = {
        "source": location.shown,
        "identity": ", ".join(f"{key} {value}" for key, value in identity.items()),  # what marks it replaced
        "reader": info.reader,
        "vendor": info.vendor,
        "objective power": str(info.objective_power or "-"),
        "level-0 size (w×h)": "×".join(map(str, info.dimensions)),
        "level-0 mpp": f"{info.mpp[0]:.4f} × {info.mpp[1]:.4f} ({info.mpp_source})" if info.mpp else "none",
        "levels": ", ".join(f"{w}×{h} (÷{d:g})" for (w, h), d in zip(info.level_dimensions, info.level_downsamples)),
        "processing": f"{view.shape[1]}×{view.shape[0]} px at {view.mpp:.4f} µm/px, level {view.level}"
        + (" read natively" if view.native else " resampled"),
        "tissue": f"{mask.tissue_fraction:.1%} of the slide ({mask.source} mask)",
    }
    summary = {key: value for key, value in plan.summary().items() if key not in ("slide_id", "shape", "mpp")}
    rows.update({f"plan: {key}": f"{value:.2f}" if isinstance(value, float) else str(value) for key, value in summary.items()})
    for key, value in rows.items():
        table.add_row(key, value)
    Console().print(table)


@main.command()
@click.argument("slide", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="PNG to write (white = tissue).")
@MPP_OVERRIDE
def mask(slide: str, output: str, mpp_override: float | None) -> None:
    """Detect tissue automatically and save the mask as a PNG for QC or editing."""
    from cerberus_batch.slides import open_slide, tissue_mask
    from cerberus_batch.slides.plan import check_extent

    with open_slide(slide, mpp=mpp_override) as opened:
        view = opened.at_mpp()
        check_extent(view)
        found = tissue_mask(view)
    found.save_png(output)
    h, w = found.array.shape
    click.echo(f"{output}: {w}×{h} mask, {found.downsample:g} processing px per pixel, {found.tissue_fraction:.1%} tissue")


EXPORT_SUFFIXES = {"qupath": ".geojson", "spatialdata": ".zarr"}  # what each format writes per slide


@main.command()
@click.argument("output", type=click.Path(file_okay=False))
@click.option("--format", "export_format", default="qupath", show_default=True,
              help="Export format: qupath (GeoJSON: nuclei as detections; glands, lumens, tissue regions as annotations) "
                   "or spatialdata (a SpatialData Zarr store: maps, object shapes and the nuclei's AnnData table).")
@click.option("--slide", "slide_id", help="Slide id to export (required when the output holds several slides, unless --all).")
@click.option("--all", "every_slide", is_flag=True, help="Export every slide, one <slide id>.geojson (or .zarr) each into the folder -o.")
@click.option("-o", "--out", "target", type=click.Path(), required=True, help="File to write (with --all: the folder).")
def export(output: str, export_format: str, slide_id: str | None, every_slide: bool, target: str) -> None:
    """Export slides' nuclei, glands, lumens and tissue regions for a viewer (QuPath: File > Import objects)."""
    from cerberus_batch.storage.layout import OutputLayout
    from cerberus_batch.storage.qupath import EXPORTED, write_qupath_geojson
    from cerberus_batch.storage.spatialdata import write_spatialdata

    if export_format not in EXPORT_SUFFIXES:
        raise click.ClickException(f"--format {export_format!r}: unknown; expected one of {', '.join(EXPORT_SUFFIXES)}")
    write = write_spatialdata if export_format == "spatialdata" else write_qupath_geojson
    if every_slide and slide_id is not None:
        raise click.ClickException(f"--slide {slide_id!r} with --all: give one or the other")
    if every_slide and Path(target).exists() and not Path(target).is_dir():
        raise click.ClickException(f"-o {target}: not a folder; --all writes one file per slide into a folder")
    if not every_slide and Path(target).is_dir() and export_format != "spatialdata":  # a store is a folder
        raise click.ClickException(f"-o {target}: a folder; give a file name, or --all to write every slide into it")
    if not Path(output).is_dir():
        raise click.ClickException(f"{output}: output folder not found")
    slides = OutputLayout(output).table_slides(kind.name for kind in EXPORTED)
    if not slides:
        raise click.ClickException(f"{output}: no tables found (has the run finished?)")
    if every_slide:
        files = {slide: Path(target) / f"{slide}{EXPORT_SUFFIXES[export_format]}" for slide in slides}  # ids hold no "/"
    elif slide_id is None and len(slides) > 1:
        raise click.ClickException(
            f"{output} holds {len(slides)} slides and -o {target} takes one slide per file; pick one with --slide "
            f"({', '.join(slides[:5])}{', ...' if len(slides) > 5 else ''}), or write one file per slide into the folder -o with --all"
        )
    elif slide_id is not None and slide_id not in slides:
        raise click.ClickException(f"--slide {slide_id!r}: no tables for this slide in {output}")
    else:
        files = {slide_id or slides[0]: Path(target)}
    for slide, file in files.items():
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            counts = write(output, slide, file)
        except OSError as err:
            raise click.ClickException(f"{file}: {err.strerror or err}") from None
        click.echo(f"{file}: slide {slide}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))


@main.command()
@click.option("--model", "model_dir", type=click.Path(file_okay=False), help="Cerberus model folder (weights.tar + settings.yml).")
@click.option("--input-dir", required=True, type=click.Path(file_okay=False, exists=True), help="Folder of PNG/JPEG/TIFF tiles (searched recursively).")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False), help="One folder per image is written here.")
@click.option("--mpp", type=float, help=f"The images' own µm/px; they are resampled to {PROCESSING_MPP}. Default: already at {PROCESSING_MPP}.")
@click.option("--mode", type=click.Choice(["tile", "patch"]), default="tile", show_default=True, help="Large tiles or the reference's 448-px patches.")
@click.option("--model-kind", default="cerberus", show_default=True, help=f"A registered model kind: {', '.join(factory.MODEL_KINDS)}.")
@click.option("--batch-size", type=click.IntRange(min=1), default=BATCH_SIZE, show_default=True)
def tile(model_dir: str | None, input_dir: str, output_dir: str, mpp: float | None, mode: str, model_kind: str, batch_size: int) -> None:
    """Run the model on every image of a folder: maps, nuclei/gland/lumen tables and an overlay per image."""
    from cerberus_batch.pipeline.tile import find_images, run_tile_mode

    if mpp is not None and not mpp > 0:
        raise click.ClickException(f"--mpp {mpp}: must be positive")
    factory.model_kind(model_kind)  # an unknown kind refused before the images are searched
    if not find_images(Path(input_dir)):
        raise click.ClickException(f"{input_dir}: no PNG, JPEG or TIFF images found")
    if model_kind == "cerberus" and model_dir is None:
        from cerberus_batch.model.check import WHERE_TO_GET

        raise click.ClickException(
            f"--model is required for --model-kind cerberus: give {WHERE_TO_GET}; or use --model-kind stain (no weights)"
        )
    predictor = factory.build_predictor(model_kind, model_dir, options=InferenceOptions(mode=mode, batch_size=batch_size))

    def report(outcome) -> None:
        if outcome.error is None:
            counts = ", ".join(f"{n} {kind}" for kind, n in outcome.counts.items())
            click.echo(f"{outcome.folder}: {counts}")
        else:
            click.echo(f"FAILED {outcome.error}" + ("; its traceback:" if outcome.traceback else ""), err=True)
            click.echo(outcome.traceback or "", err=True, nl=False)

    outcomes = run_tile_mode(Path(input_dir), Path(output_dir), predictor, mpp, on_image=report, model_dir=model_dir)
    failed = sum(outcome.error is not None for outcome in outcomes)
    click.echo(f"{len(outcomes) - failed}/{len(outcomes)} images done")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
