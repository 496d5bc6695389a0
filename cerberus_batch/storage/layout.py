"""The output folder, named once: every path a run writes under OUT comes from here.

```
OUT/run.json  run_report.json  summary.parquet  summary.csv  .cerberus-batch.lock
OUT/maps/<slide>/                                   Zarr group of the slide's maps
OUT/tables/<kind>/slide_id=<slide>/part-0.parquet   GeoParquet, hive-partitioned by slide
OUT/tables/overview/<slide>.png                     QC picture
OUT/masks/<slide>.png  OUT/plans/<slide>.json  OUT/logs/<slide>.log
OUT/ledger/<slide>/                                 resume markers
```
"""

from __future__ import annotations

from pathlib import Path

MAPS, TABLES, LEDGER, MASKS, PLANS, LOGS = "maps", "tables", "ledger", "masks", "plans", "logs"
TABLE_PART = "part-0.parquet"


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
    def lock(self) -> Path:
        return self.root / ".cerberus-batch.lock"

    @property
    def run_folders(self) -> tuple[Path, ...]:
        """Everything a run computes, per slide: what `--fresh` clears."""
        return tuple(self.root / name for name in (LEDGER, MAPS, TABLES, PLANS, MASKS, LOGS))

    def maps(self, slide_id: str) -> Path:
        return self.root / MAPS / slide_id

    def tables(self, kind: str) -> Path:
        """One kind's dataset, partitioned by slide."""
        return self.root / TABLES / kind

    def table_part(self, kind: str, slide_id: str) -> Path:
        return self.tables(kind) / f"slide_id={slide_id}" / TABLE_PART

    def overview(self, slide_id: str) -> Path:
        return self.tables("overview") / f"{slide_id}.png"

    def mask(self, slide_id: str) -> Path:
        return self.root / MASKS / f"{slide_id}.png"

    def plan(self, slide_id: str) -> Path:
        return self.root / PLANS / f"{slide_id}.json"

    def log(self, slide_id: str) -> Path:
        return self.root / LOGS / f"{slide_id}.log"

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER


class ImageLayout:
    """Tile mode's folder for one image: its maps, a table per object kind and the overlay."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.maps = self.folder / "maps.zarr"
        self.overlay = self.folder / "overlay.png"

    def table(self, kind: str) -> Path:
        return self.folder / f"{kind}.parquet"
