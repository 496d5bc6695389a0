"""The `cerberus-batch` command line."""

from __future__ import annotations

import click

from cerberus_batch import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cerberus-batch")
def main() -> None:
    """Run the Cerberus histology model over cohorts of whole-slide images."""


def _cohort(path: str):
    from cerberus_batch.pipeline.config import CohortError, load_cohort

    try:
        return load_cohort(path)
    except CohortError as err:
        raise click.ClickException(str(err)) from None


@main.command()
@click.argument("cohort_file", type=click.Path(dir_okay=False))
@click.option("--fresh", is_flag=True, help="Recompute everything, discarding maps made with other settings.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def run(cohort_file: str, fresh: bool, no_progress: bool) -> None:
    """Run a cohort: slides → chunk tasks → maps (and tables) under the cohort's output folder."""
    cohort = _cohort(cohort_file)
    from cerberus_batch.model.checkpoint import CheckpointError
    from cerberus_batch.pipeline.ledger import RunMismatch
    from cerberus_batch.pipeline.run import run_cohort

    try:
        report = run_cohort(cohort, fresh=fresh, show_progress=not no_progress)
    except (CheckpointError, RunMismatch) as err:
        raise click.ClickException(str(err)) from None
    done = sum(1 for s in report.slides.values() if s.status == "done")
    click.echo(f"{done}/{len(report.slides)} slides done; report: {cohort.output / 'run_report.json'}")
    for slide_id, outcome in report.failed.items():
        click.echo(f"FAILED {slide_id}: {outcome.error}", err=True)
    if report.status == "interrupted":
        click.echo("Interrupted: rerun the same command to resume.", err=True)
        raise SystemExit(130)
    if report.status != "ok":
        raise SystemExit(1)


@main.command()
@click.argument("cohort_file", type=click.Path(dir_okay=False))
def validate(cohort_file: str) -> None:
    """Check a cohort file and print its plan (slides, chunks, tissue, work) without running."""
    from rich.console import Console
    from rich.table import Table

    from cerberus_batch.pipeline.plan import plan_cohort

    cohort = _cohort(cohort_file)
    table = Table(title=f"{cohort.name}: {len(cohort.slides)} slides → {cohort.output}")
    for column in ("slide", "size (proc px)", "tissue mm²", "chunks", "cells", "work (Mpx)", "problem"):
        table.add_column(column)
    problems = 0
    for slide, plan, error in plan_cohort(cohort):
        if error:
            problems += 1
            table.add_row(slide.id, "", "", "", "", "", error)
            continue
        summary = plan.summary()
        h, w = plan.shape
        table.add_row(
            slide.id, f"{w}×{h}", f"{plan.tissue_mm2:.2f}", str(len(plan.chunks)), str(plan.cells),
            f"{summary.get('work_megapixels', 0):.1f}", "",
        )
    Console().print(table)
    if problems:
        raise SystemExit(1)


@main.command()
@click.argument("output", type=click.Path(file_okay=False, exists=True))
def status(output: str) -> None:
    """Per-slide progress of a run, from its ledger and report."""
    from cerberus_batch.pipeline.status import print_status

    print_status(output)


@main.command("cluster-spec")
@click.argument("cohort_file", type=click.Path(dir_okay=False))
def cluster_spec(cohort_file: str) -> None:
    """Print what the cohort's cluster would submit: the SLURM job script or the Kubernetes manifests."""
    from cerberus_batch.cluster import submission_preview

    cohort = _cohort(cohort_file)
    try:
        click.echo(submission_preview(cohort.cluster), nl=False)
    except (ValueError, RuntimeError) as err:
        raise click.ClickException(f"{cohort_file}: cluster: {err}") from None


if __name__ == "__main__":
    main()
