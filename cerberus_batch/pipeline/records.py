"""What a run records of itself as slides finish: each slide's outcome, `OUT/run_report.json`, the
cohort summary and composition, and the cohort report."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from cerberus_batch.cohort_report import CohortReport
from cerberus_batch.errors import first_line
from cerberus_batch.pipeline.config import Cohort
from cerberus_batch.storage.atomic import write_bytes_durably
from cerberus_batch.storage.composition import write_cohort_composition
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.ledger import TABLES_COMMITTED, TIMED, Ledger
from cerberus_batch.storage.summary import COMPOSITION, write_cohort_summary


@dataclass
class SlideOutcome:
    status: str = "pending"  # pending | done | failed
    error: str | None = None
    note: str | None = None  # done, but worth a look (e.g. no tissue)
    chunks: int = 0
    chunks_computed: int = 0
    chunks_skipped: int = 0  # done by an earlier run
    tables_skipped: bool = False  # written by an earlier run
    tissue_mm2: float = 0.0
    tissue_mpx: float = 0.0  # processing Mpx of its tissue cells (`ChunkPlan.tissue_mpx`)
    seconds: float | None = None  # computing time, summed over the runs that worked on it; None: not yet timed
    seconds_by_stage: dict[str, float] = field(default_factory=dict)  # its tasks' seconds by stage (`stages`), summed so too
    fetched_bytes: int = 0  # read from a remote slide by this run (0 for local files)
    fetched_requests: int = 0


@dataclass
class RunReport:
    cohort: str
    output: str
    status: str = "running"  # running | ok | failed | interrupted
    started: float = field(default_factory=time.time)
    finished: float | None = None
    dashboard: str | None = None
    slides: dict[str, SlideOutcome] = field(default_factory=dict)

    def write(self, output: Path) -> None:
        write_bytes_durably(OutputLayout(output).run_report, json.dumps(asdict(self), indent=2).encode())


REPORT_EVERY = 1.0  # seconds: the least time between two rewrites of the report and summary while slides finish
REPORT_SHARE = 0.05  # and at most this share of the run's time goes into rewriting them


class RunRecords:
    """`run_report.json`, the cohort summary and `report.html`, rewritten as slides finish, so a run that
    dies leaves them for every slide finished until moments before. Each rewrite costs time in proportion to the
    cohort, so they are spaced out by `REPORT_EVERY`, or longer where one took more than
    `REPORT_SHARE` of that (a 1,000-slide cohort must not cost a million rows written); and at the end.
    `run_report.json` counts chunks too, so it is rewritten as chunks finish; the summary and the report
    show only finished slides, so they wait for one (rewriting them took about 2% of a 2-core
    machine's time while a slide's chunks ran, for an unchanged page).

    The summary covers every slide whose tables exist, this run's or an earlier one's (the ledger's
    rows, read once at the start and again for each slide that finishes).
    """

    def __init__(self, cohort: Cohort, report: RunReport, ledger: Ledger, note: Callable[[str], None]) -> None:
        self.cohort, self.report, self.ledger, self.note = cohort, report, ledger, note
        self.rows: dict[str, dict[str, Any]] = {}
        self.seconds: dict[str, float | None] = {}  # per slide: its computing time (`CohortRun.timed`)
        self.composition: dict[str, list[dict[str, Any]]] = {}  # per slide: its rows of the crossed counts
        self.finished = True  # a slide finished since the summary and report were last written (or they never were)
        for slide in cohort.slides:
            self.slide_finished(slide.id)
        self.due = 0.0  # time.monotonic() from which the next rewrite may happen
        self.html = CohortReport(cohort.output)

    def slide_finished(self, slide_id: str) -> None:
        self.finished = True
        row = self.ledger.slide_stage(slide_id, TABLES_COMMITTED)
        self.seconds[slide_id] = (self.ledger.slide_stage(slide_id, TIMED) or {}).get("seconds")
        if row is None:
            self.rows.pop(slide_id, None)
            self.composition.pop(slide_id, None)
        else:
            self.composition[slide_id] = row.pop(COMPOSITION, [])  # none for a slide of an earlier version
            self.rows[slide_id] = row

    def write(self, final: bool = False) -> None:
        began = time.monotonic()
        if not final and began < self.due:
            return
        finished, self.finished = self.finished or final, False
        rows = [{**self.rows[s.id], "wall_seconds": _rounded(self.seconds[s.id])}
                for s in self.cohort.slides if s.id in self.rows]
        if rows and finished:  # before the report: a slide the report calls done always has its summary row
            write_cohort_summary(self.cohort.output, rows)
            write_cohort_composition(self.cohort.output, [r for s in self.cohort.slides for r in self.composition.get(s.id, ())])
        self.report.write(self.cohort.output)
        if finished:
            try:  # from the records just written; a report that cannot be drawn must not stop the cohort
                self.html.write()
            except Exception as err:  # noqa: BLE001 - any failure of a view, reported in one line
                self.note(f"WARNING {self.html.path}: not rewritten: {first_line(err, typed=True)}")
        self.due = time.monotonic() + max(REPORT_EVERY, (time.monotonic() - began) / REPORT_SHARE)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def resumed(outcome: SlideOutcome) -> str:
    """What an earlier run had already done for a slide, in words."""
    said = f"{outcome.chunks_skipped} of {outcome.chunks} chunks already done"
    return said + (", tables already written" if outcome.tables_skipped else "")
