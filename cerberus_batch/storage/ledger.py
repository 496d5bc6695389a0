"""The resume ledger: which chunks of which slides are durably written.

One marker file per finished chunk, created by atomic rename after its Zarr
write returned, so concurrent workers never contend for a shared file and a
crash mid-write leaves no marker (that chunk is simply recomputed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cerberus_batch.errors import RunMismatch
from cerberus_batch.storage.atomic import write_bytes_durably
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.owned import remove_owned


NUMERICS = "numerics"  # the fingerprint key a resume may change with --allow-device-change
# A slide's stages, each recorded once finished: its maps written, its tables committed (with
# their counts), its maps' viewer levels written.
MAPS_WRITTEN, TABLES_COMMITTED, LEVELS_WRITTEN = "maps", "instances", "pyramid"


class Ledger:
    def __init__(self, output: Path):
        self.root = OutputLayout(output).ledger

    def _slide(self, slide_id: str) -> Path:
        return self.root / slide_id

    def forget(self, slide_id: str) -> None:
        """Drop everything recorded for a slide, so it is computed again."""
        shutil.rmtree(self._slide(slide_id), ignore_errors=True)

    def mark_done(self, slide_id: str, chunk_index: int) -> None:
        write_bytes_durably(self._slide(slide_id) / f"chunk-{chunk_index}.done", b"")

    def done_chunks(self, slide_id: str) -> set[int]:
        folder = self._slide(slide_id)
        if not folder.is_dir():
            return set()
        return {int(p.stem.split("-")[1]) for p in folder.glob("chunk-*.done")}

    def mark_slide(self, slide_id: str, stage: str, info: dict[str, Any]) -> None:
        """Record a finished stage of a slide (e.g. 'maps', 'instances') with what it produced."""
        write_bytes_durably(self._slide(slide_id) / f"{stage}.json", json.dumps(info).encode())

    def slide_stage(self, slide_id: str, stage: str) -> dict[str, Any] | None:
        path = self._slide(slide_id) / f"{stage}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def mark_commit(self, slide_id: str, kind: str, token: str) -> None:
        """Record that the run with this token has staged all of a slide's parts of a kind and commits them."""
        write_bytes_durably(self._slide(slide_id) / f"commit-{kind}.token", token.encode())

    def commit_token(self, slide_id: str, kind: str) -> str | None:
        """The token of the run that last began to commit the slide's table of a kind."""
        path = self._slide(slide_id) / f"commit-{kind}.token"
        return path.read_text() if path.is_file() else None

    def slides(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []


def check_run(output: Path, fingerprint: dict[str, Any], *, fresh: bool, allow_device_change: bool = False) -> None:
    """Refuse to mix runs: the settings that determine the maps must match the folder's.

    With `fresh`, what earlier runs wrote is removed (and only that) so everything is recomputed. With
    `allow_device_change`, maps made with other numerics (device kind, precision) may be
    continued; they agree only within the precision of the coarser one.
    """
    layout = OutputLayout(output)
    path = layout.run_settings
    if path.is_file() and not fresh:
        previous = json.loads(path.read_text())
        changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
        if changed == [NUMERICS] and not allow_device_change:
            raise RunMismatch(
                f"{output}: holds maps computed as {previous.get(NUMERICS, 'unrecorded numerics')}, this run computes "
                f"{fingerprint[NUMERICS]}; pass --allow-device-change to continue them, or --fresh to recompute"
            )
        changed = [k for k in changed if not (k == NUMERICS and allow_device_change)]
        if changed:
            raise RunMismatch(
                f"{output}: holds a run with different {', '.join(changed)}; "
                "use another output folder or pass --fresh to recompute it"
            )
    if fresh:
        remove_owned(output)
    write_bytes_durably(path, json.dumps(fingerprint, indent=2, sort_keys=True).encode())
