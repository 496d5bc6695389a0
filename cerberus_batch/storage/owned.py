"""What in an output folder is ours to replace or remove: nothing a user put there ever is.

Folders carry our mark (`atomic.is_ours`). Files cannot, so before any work starts a run lists every
file it may write (and its work folders: the ledger, the tables' staging) in `OutputLayout.owned`,
and lists a path only while it is absent or listed already:
a user's file is never listed, so never replaced nor removed. The run process lists them all at once
(one atomic write, whatever the cohort's size); the workers that write them record nothing. When the
run ends, listed paths it never wrote (the log of a slide that did not fail) leave the list, so a file
a user puts there afterwards is theirs.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from cerberus_batch.errors import OutputError
from cerberus_batch.storage.atomic import is_ours, remove_path, sweep_leftovers, write_bytes_durably
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.vocabulary import KINDS

KIND_NAMES = tuple(kind.name for kind in KINDS)


def listed(layout: OutputLayout) -> set[str]:
    """The paths, relative to the output folder, listed as ours."""
    try:
        return set(json.loads(layout.owned.read_text()))
    except FileNotFoundError:
        return set()


@contextmanager
def claim_run(output: Path, slide_ids: Sequence[str]) -> Iterator[None]:
    """Before a run's work: refuse it in one line if a user's file or folder is where it would write,
    sweep what killed writes left there, and list the files it may write; after: unlist those it did not."""
    layout = OutputLayout(output)
    files = [*layout.run_files, *layout.work_folders(KIND_NAMES), *(f for s in slide_ids for f in layout.slide_files(s))]
    folders = [folder for s in slide_ids for folder in layout.slide_folders(s, KIND_NAMES)]
    claim_files(output, files, folders)
    for parent, names in _by_folder([*files, *folders]).items():
        sweep_leftovers(parent, {path.name for path in names})
    try:
        yield
    finally:
        names = listed(layout)
        present = _present(layout.root / name for name in names)
        written = {name for name in names if layout.root / name in present}
        if written != names:
            write_bytes_durably(layout.owned, json.dumps(sorted(written)).encode())


def claim_files(output: Path, files: Sequence[Path], folders: Sequence[Path] = ()) -> None:
    """List `files` (paths under `output`) as ours, after refusing any that exists unlisted, or any
    of `folders` that exists without our mark."""
    layout = OutputLayout(output)
    names = listed(layout)
    present = _present([*files, *folders])
    if not layout.owned.exists() and layout.run_settings.is_file():
        # An output of version 0.2, which kept no list: what lies at our paths beside its run.json is its.
        names = {_name(layout, f) for f in files if f in present}
    _refuse([f for f in files if f in present and _name(layout, f) not in names]
            + [folder for folder in folders if folder in present and not is_ours(folder)])
    claimed = names | {_name(layout, f) for f in files}
    if claimed != names:
        write_bytes_durably(layout.owned, json.dumps(sorted(claimed)).encode())


def claim_folders(folders: Sequence[Path]) -> None:
    """Tile mode's check before any image: each folder is absent or ours; what killed writes left beside them is swept."""
    present = _present(folders)
    _refuse([folder for folder in folders if folder in present and not is_ours(folder)])
    for parent, names in _by_folder(folders).items():
        sweep_leftovers(parent, {path.name for path in names})


def remove_owned(output: Path) -> None:
    """What `--fresh` clears: each listed file and work folder, and each slide folder with our mark.
    Whatever else is there stays."""
    layout = OutputLayout(output)
    work = set(layout.work_folders(KIND_NAMES))
    for name in listed(layout):
        path = layout.root / name
        if path in work or not path.is_dir():  # a folder where we listed a file is not one we wrote
            remove_path(path)
    for folder in layout.slide_folders_found(KIND_NAMES):
        if is_ours(folder):
            remove_path(folder)


def remove_listed_file(output: Path, path: Path) -> None:
    """Remove a file of ours under `output` (e.g. a slide's log once the slide succeeds); a user's file
    at that path is not listed, so it stays."""
    layout = OutputLayout(output)
    if _name(layout, path) in listed(layout) and path.is_file():
        path.unlink()


def _name(layout: OutputLayout, path: Path) -> str:
    return path.relative_to(layout.root).as_posix()


def _by_folder(paths: Iterable[Path]) -> dict[Path, list[Path]]:
    grouped: dict[Path, list[Path]] = defaultdict(list)
    for path in paths:
        grouped[path.parent].append(path)
    return grouped


def _present(paths: Iterable[Path]) -> set[Path]:
    """Those of `paths` that exist, listing each folder once: a stat per path would be thousands of
    round trips for a large cohort on a network filesystem."""
    found = set()
    for folder, inside in _by_folder(paths).items():
        try:
            names = set(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        found.update(path for path in inside if path.name in names)
    return found


def _refuse(foreign: list[Path]) -> None:
    """One line naming the first of the user's paths in the way, and how many more there are."""
    if foreign:
        more = f" (and {len(foreign) - 1} more like it)" if len(foreign) > 1 else ""
        raise OutputError(f"{foreign[0]}: exists and was not written by cerberus-batch{more}; "
                          "move it away or choose another output folder")
