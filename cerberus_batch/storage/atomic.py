"""Writes that are whole or absent, durable once they return, and that never remove what we did not write.

A crash never leaves a half-written file behind; once a write returns, its bytes and every
directory entry naming it (up to a folder that already existed) survive a power cut, so a
ledger marker written afterwards never promises work that could vanish.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Collection, Iterable, Iterator

from cerberus_batch.errors import OutputError

# Every folder atomic_path writes carries this file (a Zarr group: our name in its attributes,
# as Zarr warns about files it does not know); only a folder so marked may be replaced.
MARKER = ".cerberus-batch"
SOFTWARE = "cerberus-batch"
# What atomic_path leaves beside `name` when killed: its partial (".part") or the folder it moved
# aside (".old"); a uuid4's 32 hex digits make the name ours.
LEFTOVER = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{32}\.(part|old)")
FSYNC_THREADS = 16  # fsyncs in flight at once (`fsync_all`): they wait on the disk, not a core


def _beside(target: Path, kind: str) -> Path:
    """A hidden sibling of `target` of this kind ("part" or "old"), named as LEFTOVER matches."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.{kind}")


def is_ours(folder: Path) -> bool:
    """Whether a folder carries our mark."""
    if (folder / MARKER).is_file():
        return True
    try:
        attributes = json.loads((folder / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False
    return str(attributes.get("software", "")).startswith(SOFTWARE)


def fsync_path(path: str | Path) -> None:
    """Flush a file's bytes, or a folder's entries, to stable storage."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def make_dirs(path: str | Path) -> Path:
    """`mkdir -p` whose new folders survive a crash: each new folder and its parent are fsynced."""
    path = Path(path)
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:  # another worker may make the same folder at the same moment: that is no error
            folder.mkdir(exist_ok=True)
        except FileExistsError:  # a file is in the way
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from None
        fsync_path(folder)
        fsync_path(folder.parent)
    return path


def fsync_all(paths: Iterable[str | Path]) -> None:
    """fsync these files and folders, each once, concurrently: fsyncs waiting together share one journal
    commit on ext4 and xfs, where one after another each waits for its own. Returns when all are flushed."""
    unique = list(dict.fromkeys(map(Path, paths)))
    if len(unique) < 2:
        for path in unique:
            fsync_path(path)
        return
    with ThreadPoolExecutor(min(len(unique), FSYNC_THREADS)) as pool:
        list(pool.map(fsync_path, unique))  # raises the first failure


def tree_paths(root: str | Path, below: str | Path) -> list[Path]:
    """`below` (a file or folder under `root`) and every folder from its parent up to `root`: what a file
    a library wrote with its own `mkdir -p` and rename (Zarr's chunk files) needs fsynced, as each folder
    on the way may be new, and each holds an entry the next one needs."""
    root, below = Path(root), Path(below)
    paths = [below]
    for folder in below.parents:
        paths.append(folder)
        if folder == root:
            return paths
    raise ValueError(f"{below} is not inside {root}")  # a programming error, never a user's


def fsync_tree(root: str | Path, below: str | Path) -> None:
    """fsync what `tree_paths` names."""
    fsync_all(tree_paths(root, below))


def _sync_written(partial: Path) -> None:
    """Everything written under `partial` (a file, or a folder and all it holds) reaches the disk."""
    if partial.is_dir():
        paths: list[Path] = []
        for folder, _, files in os.walk(partial):
            paths += [Path(folder), *(Path(folder) / name for name in files)]
        fsync_all(paths)
    elif partial.exists():
        fsync_path(partial)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a hidden sibling to write to; it replaces `target` only if the block succeeds.

    Works for files and folders; the sibling lives in the same folder (created, durably, if
    missing), so the final rename is atomic on one filesystem. What was written, and the rename, are fsynced before returning.
    A folder is marked as ours, and an existing folder is replaced only if it carries that mark:
    an unknown folder (a user's images, say) is refused, never removed.
    """
    target = Path(target)
    make_dirs(target.parent)
    partial, old = _beside(target, "part"), _beside(target, "old")
    try:
        yield partial
        if partial.is_dir():
            replace_folder(partial, target, old)
        else:
            _sync_written(partial)
            os.replace(partial, target)
            fsync_path(target.parent)
    finally:
        for leftover in (partial, old):
            remove_path(leftover)


def remove_path(path: Path) -> None:
    """Remove a file, or a folder with all it holds (a link: only the link); nothing if it is gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_leftovers(folder: Path, names: Collection[str] | None = None) -> None:
    """Remove what killed atomic writes left in `folder` (of targets with these names; any without).

    Only while nothing else writes there: a live write's partial has the same form."""
    try:
        entries = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        found = LEFTOVER.fullmatch(entry)
        if found and (names is None or found["name"] in names):
            remove_path(folder / entry)


def replace_folder(built: Path, target: Path, aside: Path) -> None:
    """Rename the finished folder `built` to `target` (both on one filesystem), marked as ours.

    A folder can only be renamed onto a missing one: the folder at `target` (refused unless
    ours) is first renamed to `aside` (a missing path whose parent exists) and removed after.
    A reader finds the old folder whole, then for the moment between the two renames none,
    then the new one whole. What `built` holds and both renames are fsynced before returning.
    """
    if not (built / "zarr.json").is_file():
        (built / MARKER).write_bytes(b"")
    if target.exists() and not is_ours(target):
        raise OutputError(f"{target}: exists and was not written by cerberus-batch; refusing to replace it")
    _sync_written(built)
    if target.exists():
        os.replace(target, aside)
    os.replace(built, target)
    for folder in {target.parent, built.parent, aside.parent}:
        fsync_path(folder)
    shutil.rmtree(aside, ignore_errors=True)


def write_bytes_durably(target: str | Path, data: bytes) -> None:
    """Atomic and fsynced: for records that promise work is done (the resume ledger)."""
    with atomic_path(target) as partial:
        partial.write_bytes(data)
