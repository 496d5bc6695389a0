"""The output folder, named once: every path a run writes under OUT comes from here.

```
OUT/run.json  run_report.json  summary.parquet  summary.csv  composition.parquet  composition.csv
OUT/report.html  run.log  .cerberus-batch.lock
OUT/.cerberus-batch-files.json                      the files runs wrote here (`storage.owned`)
OUT/maps/<slide>/                                   Zarr group of the slide's maps
OUT/tables/<kind>/slide_id=<slide>/part-*.parquet   GeoParquet, hive-partitioned by slide, a part per chunk + the merge's
OUT/tables/<kind>/.staging/slide_id=<slide>/<run token>/   a run's parts of the slide until its commit renames them into place
OUT/tables/overview/<slide>.png  <slide>.jpg       QC picture, and its preview for the cohort report
OUT/masks/<slide>.png  OUT/plans/<slide>.json  OUT/logs/<slide>.log
OUT/ledger/<slide>/chunk-<index>.done  <stage>.json  commit-<kind>.token   resume markers (`storage.ledger`)
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

MAPS, TABLES, LEDGER, MASKS, PLANS, LOGS = "maps", "tables", "ledger", "masks", "plans", "logs"
PARTITION = "slide_id="  # hive partitioning: readers turn the folder name back into the slide_id column
TABLE_PART = "part-{}.parquet"  # {}: the chunk's index, BORDER_PART and the share's index, or MERGE_PART
BORDER_PART = "border-"
MERGE_PART = "merge"
# Hidden ("." names: pyarrow and geopandas skip them) and three levels deep, so DuckDB's
# `<kind>/*/*.parquet` never reaches it either (its globs do match "." names).
STAGING = ".staging"
REPLACED = "replaced"  # beside the run tokens (8 hex digits), never one of them
CHUNK_DONE = "chunk-{}.done"  # {}: the chunk's index


class OutputLayout:
    """Where each thing lives in one output folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def run_settings(self) -> Path:
        """What the maps were made with (the run's fingerprint)."""
        return self.root / "run.json"

    @property
    def run_report(self) -> Path:
        return self.root / "run_report.json"

    @property
    def summaries(self) -> tuple[Path, Path]:
        """The cohort summary as Parquet and as CSV."""
        return self.root / "summary.parquet", self.root / "summary.csv"

    @property
    def compositions(self) -> tuple[Path, Path]:
        """The cohort's crossed counts (objects per slide, tissue type, kind and class) as Parquet and as CSV."""
        return self.root / "composition.parquet", self.root / "composition.csv"

    @property
    def report(self) -> Path:
        """The cohort report (`cohort_report`)."""
        return self.root / "report.html"

    @property
    def run_log(self) -> Path:
        """What the libraries said during runs (their warnings and errors), appended to by each run."""
        return self.root / "run.log"

    @property
    def lock(self) -> Path:
        return self.root / ".cerberus-batch.lock"

    @property
    def owned(self) -> Path:
        """The list of files runs wrote, or were about to write, here (`storage.owned`)."""
        return self.root / ".cerberus-batch-files.json"

    @property
    def run_files(self) -> tuple[Path, ...]:
        """The files a run writes for its whole cohort."""
        return (self.run_settings, self.run_report, *self.summaries, *self.compositions, self.report, self.run_log)

    def work_folders(self, kinds: Iterable[str]) -> tuple[Path, ...]:
        """Folders holding only a run's records and staged parts, removed whole when they go."""
        return (self.ledger, *(self.tables(kind) / STAGING for kind in kinds))

    def slide_files(self, slide_id: str) -> tuple[Path, ...]:
        """The files a run may write for a slide (its log only if the slide fails)."""
        return (self.mask(slide_id), self.plan(slide_id), self.log(slide_id), self.overview(slide_id), self.overview_preview(slide_id))

    def slide_folders(self, slide_id: str, kinds: Iterable[str]) -> tuple[Path, ...]:
        """The folders a run writes for a slide, each carrying our mark (`atomic.is_ours`): its maps, its table partitions."""
        return (self.maps(slide_id), *(self.table_folder(kind, slide_id) for kind in kinds))

    def slide_folders_found(self, kinds: Iterable[str]) -> list[Path]:
        """Whatever is where `slide_folders` of any slide would be."""
        return [*self.root.glob(f"{MAPS}/*"), *(p for kind in kinds for p in self.tables(kind).glob(f"{PARTITION}*"))]

    def maps(self, slide_id: str) -> Path:
        return self.root / MAPS / slide_id

    def tables(self, kind: str) -> Path:
        """One kind's dataset, partitioned by slide."""
        return self.root / TABLES / kind

    def table_folder(self, kind: str, slide_id: str) -> Path:
        """One slide's committed partition of a kind's dataset."""
        return self.tables(kind) / f"{PARTITION}{slide_id}"

    def table_files(self, kind: str, slide_id: str = "*") -> list[Path]:
        """The slide's committed part files of a kind (every slide's with "*"; ids hold no other
        glob character), sorted by path; empty when there are none."""
        return sorted(self.tables(kind).glob(f"{PARTITION}{slide_id}/{TABLE_PART.format('*')}"))

    def table_slides(self, kinds: Iterable[str]) -> list[str]:
        """Slide ids with a committed partition of any of these kinds, sorted."""
        return sorted({folder.name.removeprefix(PARTITION) for kind in kinds for folder in self.tables(kind).glob(f"{PARTITION}*")})

    def table_staging(self, kind: str, slide_id: str) -> Path:
        """The slide's work area of a kind: the parts each run stages, and the folder a commit replaces."""
        return self.tables(kind) / STAGING / f"{PARTITION}{slide_id}"

    def staged_parts(self, kind: str, slide_id: str, token: str) -> Path:
        """The slide's parts of a kind written by the run with this token, before its commit."""
        return self.table_staging(kind, slide_id) / token

    def staged_part(self, kind: str, slide_id: str, token: str, part: int | str) -> Path:
        """One staged part: a chunk's (its index) or the merge's (MERGE_PART)."""
        return self.staged_parts(kind, slide_id, token) / TABLE_PART.format(part)

    def replaced_tables(self, kind: str, slide_id: str) -> Path:
        """Where a commit moves the slide's previous partition for the moment between its two renames."""
        return self.table_staging(kind, slide_id) / REPLACED

    def overview(self, slide_id: str) -> Path:
        return self.tables("overview") / f"{slide_id}.png"

    def overview_preview(self, slide_id: str) -> Path:
        return self.overview(slide_id).with_suffix(".jpg")

    def mask(self, slide_id: str) -> Path:
        return self.root / MASKS / f"{slide_id}.png"

    def plan(self, slide_id: str) -> Path:
        return self.root / PLANS / f"{slide_id}.json"

    def log(self, slide_id: str) -> Path:
        return self.root / LOGS / f"{slide_id}.log"

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER

    def ledger_slide(self, slide_id: str) -> Path:
        """Everything the ledger records of a slide."""
        return self.ledger / slide_id

    def chunk_done(self, slide_id: str, chunk_index: int) -> Path:
        """The marker of a chunk whose maps are durably written."""
        return self.ledger_slide(slide_id) / CHUNK_DONE.format(chunk_index)

    def chunks_done(self, slide_id: str) -> set[int]:
        """The indices of the slide's chunks with a `chunk_done` marker."""
        prefix, suffix = CHUNK_DONE.split("{}")
        found = self.ledger_slide(slide_id).glob(CHUNK_DONE.format("*"))
        return {int(p.name.removeprefix(prefix).removesuffix(suffix)) for p in found}

    def stage_record(self, slide_id: str, stage: str) -> Path:
        """What a finished stage of the slide produced (`ledger.MAPS_WRITTEN`, ...)."""
        return self.ledger_slide(slide_id) / f"{stage}.json"

    def commit_token(self, slide_id: str, kind: str) -> Path:
        """The token of the run that last began to commit the slide's table of a kind."""
        return self.ledger_slide(slide_id) / f"commit-{kind}.token"


class ImageLayout:
    """Tile mode's folder for one image: its maps, a table per object kind and the overlay."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.maps = self.folder / "maps.zarr"
        self.overlay = self.folder / "overlay.png"

    def table(self, kind: str) -> Path:
        return self.folder / f"{kind}.parquet"
