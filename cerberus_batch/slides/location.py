"""Where a slide, a mask or a manifest lies: a local path or a URL that an fsspec filesystem reads.

Every address the package opens, checks or records is a `Location`. Its text (`str`, records, error
lines) never holds secrets: URL userinfo and query strings (presigned signatures, tokens) are dropped,
and `storage_options` (credentials given in the cohort file) are never shown or serialised.
Credentials otherwise come from the standard environment (`AWS_*`, `GOOGLE_APPLICATION_CREDENTIALS`, …),
which the filesystems read themselves.
"""

from __future__ import annotations

import posixpath
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import IO, Any, Iterator, Mapping
from urllib.parse import urlsplit

from pydantic_core import core_schema

# Protocols whose fsspec filesystems (s3fs, gcsfs, adlfs, aiohttp) read byte ranges of objects.
REMOTE_PROTOCOLS = frozenset({"s3", "gs", "gcs", "az", "abfs", "abfss", "http", "https"})
# A remote slide is read in blocks of this size, kept per open slide up to CACHED_BLOCKS: SVS tiles of one
# row lie together, so a chunk's row of tiles is one or two requests, and the header/IFDs one more.
BLOCK_SIZE = 2 * 2**20
CACHED_BLOCKS = 32  # 64 MiB per open slide; a worker keeps at most 8 slides open (work._cached_view)


class Location:
    """A local file (`kind` "file") or an object behind a URL (`kind` "url")."""

    __slots__ = ("kind", "address", "storage_options")

    def __init__(self, kind: str, address: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.kind = kind
        self.address = address  # the path, or the full URL (may hold secrets: never shown)
        self.storage_options = dict(storage_options or {})

    @classmethod
    def parse(cls, value: str | Path | Location, base: Path | None = None, storage_options: Mapping[str, Any] | None = None) -> Location:
        """`value` as a Location; a relative path is taken from `base` (made absolute) when given.

        Raises ValueError for a URL whose protocol no filesystem here reads."""
        if isinstance(value, Location):
            return value
        text = str(value)
        if "://" in text:
            protocol = text.split("://", 1)[0].lower()
            if protocol == "file":
                text = text.split("://", 1)[1]
            elif protocol in REMOTE_PROTOCOLS:
                return cls("url", text, storage_options)
            else:
                raise ValueError(f"{protocol}:// is not a supported location; use a path or one of "
                                 f"{', '.join(p + '://' for p in sorted(REMOTE_PROTOCOLS))}")
        path = Path(text).expanduser()
        return cls("file", str((base / path).resolve() if base is not None else path))

    @property
    def remote(self) -> bool:
        return self.kind == "url"

    @property
    def local(self) -> Path:
        if self.remote:
            raise ValueError(f"{self} is not a local file")
        return Path(self.address)

    @property
    def shown(self) -> str:
        """The address without userinfo, query or fragment: what records and messages name."""
        if not self.remote:
            return self.address
        url = urlsplit(self.address)
        host = url.hostname or ""
        return f"{url.scheme}://{host}{f':{url.port}' if url.port else ''}{url.path}"

    @property
    def name(self) -> str:
        return self.local.name if not self.remote else urlsplit(self.address).path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def join(self, relative: str) -> Location:
        """`relative` (a path or a URL) taken from this location's folder, as a manifest's rows are."""
        if "://" in relative or not self.remote:
            return Location.parse(relative, None if self.remote else self.local.parent, self.storage_options)
        url = urlsplit(self.address)  # urljoin knows only http(s) as hierarchical: s3 paths are joined here
        path = posixpath.normpath(posixpath.join(posixpath.dirname(url.path), relative))
        return Location("url", f"{url.scheme}://{url.netloc}{path}", self.storage_options)

    def filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem and the path within it (credentials from storage_options or the environment)."""
        from fsspec.core import url_to_fs

        return url_to_fs(self.address, **self.storage_options)

    def exists(self) -> bool:
        if not self.remote:
            return self.local.is_file()
        fs, path = self.filesystem()
        return fs.isfile(path)

    def identity(self) -> dict[str, Any]:
        """What changes when the file or object is replaced: size and mtime, or size and ETag."""
        if not self.remote:
            stat = self.local.stat()
            return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        fs, path = self.filesystem()
        info = fs.info(path)
        tag = next((info[k] for k in ("ETag", "etag", "Last-Modified", "LastModified", "last_modified") if info.get(k)), None)
        return {"size": info.get("size"), "etag": str(tag) if tag is not None else None}

    def open_bytes(self) -> IO[bytes]:
        """The file, seekable; remote reads go in cached blocks, counted by `fetched`."""
        if not self.remote:
            return open(self.local, "rb")
        fs, path = self.filesystem()
        handle = fs.open(path, "rb", block_size=BLOCK_SIZE, cache_type="blockcache", cache_options={"maxblocks": CACHED_BLOCKS})
        handle.cache.fetcher = _counted(handle.cache.fetcher, self.address)
        return handle

    def read_bytes(self) -> bytes:
        with self.open_bytes() as handle:
            return handle.read()

    def matches(self) -> list[Location]:
        """The objects this URL, a pattern (`*`, `**`, e.g. over a bucket prefix), names; sorted."""
        fs, pattern = self.filesystem()
        protocol = self.address.split("://", 1)[0]
        return [Location("url", p if "://" in p else f"{protocol}://{p}", self.storage_options) for p in sorted(fs.glob(pattern))]

    def __str__(self) -> str:
        return self.shown

    def __repr__(self) -> str:
        return f"Location({self.shown!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PurePath):  # a local location is its path
            return not self.remote and self.local == other
        return isinstance(other, Location) and (self.kind, self.address) == (other.kind, other.address)

    def __hash__(self) -> int:
        return hash(self.local) if not self.remote else hash(self.address)

    def __getstate__(self) -> tuple:
        return self.kind, self.address, self.storage_options  # workers need the options to open it

    def __setstate__(self, state: tuple) -> None:
        self.kind, self.address, self.storage_options = state

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        # Records (model_dump) hold the shown address only.
        return core_schema.no_info_plain_validator_function(
            cls.parse, serialization=core_schema.plain_serializer_function_ser_schema(str),
        )


@dataclass
class Fetched:
    """Requests made and bytes received for remote reads."""

    requests: int = 0
    bytes: int = 0


# What remote reads fetched, per address, since it was last taken (see `fetched`).
_counts: dict[str, Fetched] = {}
_counts_lock = threading.Lock()

# Errors of aiohttp and botocore that mean the server was not reached or dropped the connection.
UNREACHABLE = frozenset({
    "ClientConnectorError", "ClientOSError", "ServerDisconnectedError", "ServerTimeoutError", "ClientPayloadError",
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
})


def remote_cause(err: BaseException) -> str | None:
    """Why reaching an object failed, in a user's words; None where the store is not to blame."""
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in chain:
        # An HTTP response: aiohttp's status, or requests' (DICOMweb) response.status_code.
        status = getattr(e, "status", None) or getattr(getattr(e, "response", None), "status_code", None)
        code = str(getattr(e, "response", {}).get("Error", {}).get("Code", "")) if isinstance(getattr(e, "response", None), dict) else ""
        if status in (401, 403) or isinstance(e, PermissionError) or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return ("access denied (check the credentials: AWS_* or other standard environment, or the cohort's "
                    "storage_options; and the bucket's permissions)")
        if type(e).__name__ in UNREACHABLE or isinstance(e, (ConnectionError, TimeoutError)):
            return f"server unreachable ({type(e).__name__})"
    if any(getattr(e, "status", None) == 404 or isinstance(e, FileNotFoundError) for e in chain):
        # Not the error's text: fsspec's is often the full URL, which may hold a signature.
        return "bucket not found" if any("bucket does not exist" in str(e).lower() for e in chain) else "object not found"
    return None


@contextmanager
def fetched(path: Location) -> Iterator[Fetched]:
    """What reads of `path` fetched, filled in when the block ends: everything fetched for it in this process
    since the last take, from any thread (zarr reads tiles in its own IO thread). Each request is counted
    once: a slide's sum over its tasks is exact; tasks of one slide running at once share it approximately."""
    counted = Fetched()
    try:
        yield counted
    finally:
        with _counts_lock:
            taken = _counts.pop(path.address, None)
        if taken is not None:
            counted.requests, counted.bytes = taken.requests, taken.bytes


def _counted(fetch: Any, address: str) -> Any:
    def fetch_counted(start: int, end: int) -> bytes:
        data = fetch(start, end)
        with _counts_lock:
            tally = _counts.setdefault(address, Fetched())
            tally.requests += 1
            tally.bytes += len(data)
        return data

    return fetch_counted
