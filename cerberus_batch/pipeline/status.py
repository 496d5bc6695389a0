"""`cerberus-batch status OUTPUT`: where a run stands, from its ledger and last report."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.ledger import LEVELS_WRITTEN, MAPS_WRITTEN, TABLES_COMMITTED, Ledger
from cerberus_batch.vocabulary import GLANDS, NUCLEI


def print_status(output: str | Path) -> None:
    output = Path(output)
    report_path = OutputLayout(output).run_report
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"slides": {}}
    ledger = Ledger(output)
    table = Table(title=f"{output} (last run: {report.get('status', 'unknown')})")
    for column in ("slide", "status", "chunks done", "maps", "tables", "viewer levels", "error"):
        table.add_column(column)
    for slide_id in sorted(set(report["slides"]) | set(ledger.slides())):
        outcome = report["slides"].get(slide_id, {})
        total = outcome.get("chunks", "?")
        maps = "complete" if ledger.slide_stage(slide_id, MAPS_WRITTEN) else ""
        instances = ledger.slide_stage(slide_id, TABLES_COMMITTED)
        levels = "written" if ledger.slide_stage(slide_id, LEVELS_WRITTEN) else ""
        tables = ", ".join(f"{_count(instances.get(kind.name + '_count'))} {kind.name}" for kind in (NUCLEI, GLANDS)) if instances else ""
        table.add_row(
            slide_id, outcome.get("status", "unknown"), f"{len(ledger.done_chunks(slide_id))}/{total}",
            maps, tables, levels, outcome.get("error") or "",
        )
    Console().print(table)


def _count(value: int | None) -> str:
    """A summary count; a kind the model did not compute is "–", never 0."""
    return "–" if value is None else str(value)
