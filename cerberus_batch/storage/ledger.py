"""The resume ledger: which chunks of which slides are durably written.

One marker file per finished chunk, created by atomic rename after its Zarr
write returned, so concurrent workers never contend for a shared file and a
crash mid-write leaves no marker (that chunk is simply recomputed).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
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
TIMED = "time"  # a slide's computing seconds, summed over the runs that worked on it (a replanned slide starts again)


@dataclass(frozen=True)
class SlideRecord:
    """What the ledger holds of a slide: its chunks whose maps are written, and whether its tables are
    committed and its maps' viewer levels written."""

    done_chunks: frozenset[int] = frozenset()
    tables: bool = False
    levels: bool = False


class Ledger:
    def __init__(self, output: Path):
        self.layout = OutputLayout(output)

    def forget(self, slide_id: str) -> None:
        """Drop everything recorded for a slide, so it is computed again."""
        shutil.rmtree(self.layout.ledger_slide(slide_id), ignore_errors=True)

    def mark_done(self, slide_id: str, chunk_index: int) -> None:
        write_bytes_durably(self.layout.chunk_done(slide_id, chunk_index), b"")

    def done_chunks(self, slide_id: str) -> set[int]:
        return self.layout.chunks_done(slide_id)

    def record(self, slide_id: str) -> SlideRecord:
        """What the ledger holds of a slide now."""
        return SlideRecord(frozenset(self.done_chunks(slide_id)), self.slide_stage(slide_id, TABLES_COMMITTED) is not None,
                           self.slide_stage(slide_id, LEVELS_WRITTEN) is not None)

    def mark_slide(self, slide_id: str, stage: str, info: dict[str, Any]) -> None:
        """Record a finished stage of a slide (e.g. 'maps', 'instances') with what it produced."""
        write_bytes_durably(self.layout.stage_record(slide_id, stage), json.dumps(info).encode())

    def slide_stage(self, slide_id: str, stage: str) -> dict[str, Any] | None:
        path = self.layout.stage_record(slide_id, stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def mark_commit(self, slide_id: str, kind: str, token: str) -> None:
        """Record that the run with this token has staged all of a slide's parts of a kind and commits them."""
        write_bytes_durably(self.layout.commit_token(slide_id, kind), token.encode())

    def commit_token(self, slide_id: str, kind: str) -> str | None:
        """The token of the run that last began to commit the slide's table of a kind."""
        path = self.layout.commit_token(slide_id, kind)
        return path.read_text() if path.is_file() else None

    def slides(self) -> list[str]:
        root = self.layout.ledger
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def run_changes(output: Path, fingerprint: dict[str, Any]) -> list[str]:
    """Each setting the folder's earlier run recorded otherwise than `fingerprint`, as "name: old → new"
    (nested settings by dotted name; only the sections `fingerprint` holds); none without an earlier run."""
    path = OutputLayout(output).run_settings
    if not path.is_file():
        return []
    previous, current = _flat(json.loads(path.read_text())), _flat(fingerprint)
    names = sorted(k for k in set(previous) | set(current) if k.split(".")[0] in fingerprint)
    return [f"{k}: {_shown(previous.get(k))} → {_shown(current.get(k))}" for k in names if previous.get(k) != current.get(k)]


def refuse_mismatch(output: Path, fingerprint: dict[str, Any], *, allow_device_change: bool = False) -> None:
    """Refuse a run whose settings differ from the folder's earlier run, naming every one that does.

    `fingerprint` may leave out NUMERICS (where the workers' device is not known yet): the rest is compared.
    """
    changes = run_changes(output, fingerprint)
    if allow_device_change:
        changes = [c for c in changes if not c.startswith(f"{NUMERICS}:")]
    if changes and all(c.startswith(f"{NUMERICS}:") for c in changes):
        raise RunMismatch(f"{output}: holds maps computed with other {changes[0]}; "
                          "pass --allow-device-change to continue them, or --fresh to recompute")
    if changes:
        raise RunMismatch(f"{output}: holds a run with other settings ({'; '.join(changes)}); "
                          "use another output folder or pass --fresh to recompute it")


def check_run(output: Path, fingerprint: dict[str, Any], *, fresh: bool, allow_device_change: bool = False) -> None:
    """Refuse to mix runs: the settings that determine the maps must match the folder's.

    With `fresh`, what earlier runs wrote is removed (and only that) so everything is recomputed. With
    `allow_device_change`, maps made with other numerics (device kind, precision) may be
    continued; they agree only within the precision of the coarser one.
    """
    if fresh:
        remove_owned(output)
    else:
        refuse_mismatch(output, fingerprint, allow_device_change=allow_device_change)
    write_bytes_durably(OutputLayout(output).run_settings, json.dumps(fingerprint, indent=2, sort_keys=True).encode())


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _shown(value: Any) -> str:
    """A setting as the refusal shows it; a sha256 by its first 12 digits."""
    if value is None:
        return "unrecorded"
    if isinstance(value, str) and len(value) == 64:
        return value[:12]
    return json.dumps(value)
