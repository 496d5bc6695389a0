"""Who may write an output folder: one run at a time, and never a folder that holds our inputs.

The lock is a file created with `O_CREAT | O_EXCL`, which is atomic on local disks, NFS (v3 and
later) and Lustre, where flock/fcntl locks are often unreliable or disabled. Its holder touches
it every `HEARTBEAT` seconds. A lock is stale when its holder's process is gone (same host) or
its heartbeat is older than `STALE_AFTER` (any host, e.g. a node that died); a stale lock is
taken over with a warning, by renaming it aside and creating a new one with `O_EXCL` again.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Mapping

from cerberus_batch.errors import OutputError
from cerberus_batch.storage.atomic import fsync_path, make_dirs
from cerberus_batch.storage.layout import OutputLayout

HEARTBEAT = 30.0  # seconds between touches of the lock file
STALE_AFTER = 180.0  # a lock untouched this long has lost its holder (generous for clock skew)


@dataclass(frozen=True)
class Holder:
    """Who holds an output folder."""

    host: str
    pid: int
    started: float
    command: str
    token: str

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"{self.command} on {self.host}, pid {self.pid}, started {started}"


def refuse_inputs_inside(output: Path, inputs: Mapping[str, Path]) -> None:
    """Refuse an output folder that is, contains or lies inside an input (`label: path`).

    Checked before anything is written: our writes replace folders and files by name.
    """
    out = Path(output).resolve()
    for label, path in inputs.items():
        found = Path(path).resolve()
        if found == out:
            relation = "is"
        elif found.is_relative_to(out):
            relation = "contains"
        elif found.is_dir() and out.is_relative_to(found):
            relation = "lies inside"
        else:
            continue
        raise OutputError(f"{out}: output folder {relation} the {label} {found}; choose an output folder apart from the inputs")


def check_writable(output: Path) -> None:
    """Refuse an output folder we could not create or write, without creating it."""
    folder = Path(output).resolve()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{folder}: cannot create the output folder: {existing}: {os.strerror(errno.ENOTDIR)}")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise OutputError(f"{folder}: output folder is not writable: {err.strerror or err} ({existing})") from None


class OutputLock:
    """Held for the length of a run; `taken_over` names the stale holder it replaced, if any."""

    def __init__(self, output: Path, command: str):
        self.output = Path(output)
        self.path = OutputLayout(output).lock
        self.me = Holder(socket.gethostname(), os.getpid(), time.time(), command, uuid.uuid4().hex)
        self.taken_over: Holder | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> None:
        try:
            make_dirs(self.output)
        except OSError as err:
            raise OutputError(f"{self.output}: cannot create the output folder: {err.filename}: {err.strerror or err}") from None
        for _ in range(3):  # a lock can vanish or be replaced between our looks at it
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not self._stale(holder):
                    raise OutputError(
                        f"{self.output}: another run holds this output folder ({holder.describe()}); "
                        "wait for it to end or choose another output folder"
                    ) from None
                if holder is not None:
                    self._take_over(holder)
                continue
            except OSError as err:
                raise OutputError(f"{self.output}: output folder is not writable: {err.strerror or err}") from None
            with os.fdopen(handle, "w") as file:
                file.write(json.dumps(asdict(self.me)))
                file.flush()
                os.fsync(file.fileno())
            fsync_path(self.output)
            self._beat = threading.Thread(target=self._heartbeat, name="output-lock-heartbeat", daemon=True)
            self._beat.start()
            return
        raise OutputError(f"{self.output}: could not take the lock {self.path} (other runs keep replacing it)")

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self._mine():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _holder(self) -> Holder | None:
        """The lock's holder; None if the lock is gone. A lock still being written counts as fresh."""
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            return Holder(**json.loads(text))
        except (ValueError, TypeError):
            # Not written yet by a run starting now, or left so by a crash: its age tells which.
            return Holder("?", -1, time.time() - age, "a run whose lock is not written yet", "")

    def _stale(self, holder: Holder) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if age > STALE_AFTER:
            return True
        return holder.host == self.me.host and holder.pid > 0 and not _alive(holder.pid)

    def _take_over(self, stale: Holder) -> None:
        aside = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.stale")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = Holder(**json.loads(aside.read_text()))
        except (ValueError, TypeError):
            moved = stale
        if moved.token != stale.token:
            # Another run took the stale lock over before us and we moved its fresh one: put it back.
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        else:
            self.taken_over = stale
        aside.unlink(missing_ok=True)

    def _mine(self) -> bool:
        try:
            return json.loads(self.path.read_text()).get("token") == self.me.token
        except (FileNotFoundError, ValueError):
            return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            if self._mine():
                try:
                    os.utime(self.path)
                except FileNotFoundError:
                    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextmanager
def claim_output(output: Path, inputs: Mapping[str, Path], command: str) -> Iterator[OutputLock]:
    """Check the output folder stands apart from every input, then hold its lock for the block."""
    refuse_inputs_inside(output, inputs)
    with OutputLock(output, command) as lock:
        yield lock
