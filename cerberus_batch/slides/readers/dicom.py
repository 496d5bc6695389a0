"""DICOM whole-slide images through wsidicom: a local folder of one slide's instances, or a DICOMweb series.

A slide is one series of VL Whole Slide Microscopy instances (its pyramid levels, label, overview);
each read decodes only the frames (tiles) the region covers.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np
import pydicom
import requests
from wsidicom import WsiDicom, WsiDicomWebClient

from cerberus_batch.errors import SlideError, first_line
from cerberus_batch.slides.location import Location, remote_cause
from cerberus_batch.slides.readers.dicomweb import DicomWebSeries, dicomweb_series
from cerberus_batch.slides.sources import SourceMetadata, plausible_mpp, to_rgb

DEFERRED_BYTES = 1024  # values larger than this are skipped, not read, while looking for a truncation
WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage (SOP class UID)


def folder_series(folder: Path) -> dict[str, dict[Path, str]]:
    """The whole-slide series in a folder: series UID -> its instance files and their SOP instance UIDs
    (other files are ignored)."""
    series: dict[str, dict[Path, str]] = {}
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            header = pydicom.dcmread(
                file, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"],
            )
        except (pydicom.errors.InvalidDicomError, OSError):
            continue  # DICOMDIR-less folders often hold a README or checksums beside the instances
        if header.get("SOPClassUID") == WSI_STORAGE and "SeriesInstanceUID" in header:
            series.setdefault(str(header.SeriesInstanceUID), {})[file] = str(header.SOPInstanceUID)
    return series


def one_series(path: Location) -> dict[Path, str]:
    """The instance files (and their SOP instance UIDs) of the one slide a DICOM folder holds."""
    if path.remote or not path.local.is_dir():
        raise SlideError(path, "not a DICOM folder (reader: dicom reads a local folder or a DICOMweb series URL)")
    series = folder_series(path.local)
    if not series:
        raise SlideError(path, "no DICOM whole-slide image instances in the folder")
    if len(series) > 1:
        raise SlideError(path, f"DICOM folder holds {len(series)} slides (series {', '.join(sorted(series))}); "
                         "give each series a folder of its own")
    (instances,) = series.values()
    return instances


def web_client(path: Location, series: DicomWebSeries) -> WsiDicomWebClient:
    """A DICOMweb client for the series' server, with the credentials the address (user:password@) or the
    cohort's storage_options (`headers`, as fsspec's HTTP filesystem takes them) give."""
    session = requests.Session()
    url = urlsplit(series.root)
    if url.username is not None:
        session.auth = (unquote(url.username), unquote(url.password or ""))
    session.headers.update(path.storage_options.get("headers") or {})
    root = urlunsplit((url.scheme, url.hostname + (f":{url.port}" if url.port else ""), url.path, "", ""))
    return WsiDicomWebClient.create_client(root, auth=session)


def dicom_identity(path: Location) -> dict[str, object]:
    """What changes when a DICOM slide is replaced: its SOP instance UIDs (a hash of them, sorted)."""
    series = dicomweb_series(path.address) if path.remote else None
    if series is None:
        uids = list(one_series(path).values())
    else:
        try:
            found = web_client(path, series).get_wsi_instances(series.study, [series.series])
            uids = [str(instance) for _, instance, _ in found]
        except Exception as err:  # HTTP and connection errors alike: one line
            raise SlideError(path, remote_cause(err) or f"cannot list the DICOMweb series ({_scrubbed(err, path)})") from None
        if not uids:
            raise SlideError(path, "no DICOM whole-slide image instances in the series")
    digest = hashlib.sha256("\n".join(sorted(uids)).encode()).hexdigest()
    return {"sop_instances": len(uids), "sop_instance_uids_sha256": digest}


class DicomSource:
    reader = "dicom"

    def __init__(self, path: Location, wsi: WsiDicom) -> None:
        self.path = path
        self._wsi = wsi
        self._files: list[Path] = []  # a folder's instances (none over DICOMweb)
        self._levels = list(wsi.levels)  # the pyramid, finest first
        base = self._levels[0]
        try:
            mpp = (float(base.mpp.width), float(base.mpp.height))  # from the instances' pixel spacing
        except Exception:  # wsidicom raises WsiDicomNoResolutionError where the spacing is missing
            mpp = None
        self.metadata = SourceMetadata(
            level_dimensions=tuple((level.size.width, level.size.height) for level in self._levels),
            mpp=plausible_mpp(mpp),
            vendor="dicom",
            objective_power=None,
        )

    @classmethod
    def folder(cls, path: Location) -> DicomSource:
        files = list(one_series(path))
        try:
            source = cls(path, WsiDicom.open(files))
        except Exception as err:  # wsidicom and pydicom raise many types for damaged instances
            cause = truncated_instance(files) or f"not a readable DICOM slide ({first_line(err, typed=True)})"
            raise SlideError(path, cause) from None
        source._files = files
        return source

    @classmethod
    def web(cls, path: Location, series: DicomWebSeries) -> DicomSource:
        try:
            return cls(path, WsiDicom.open_web(web_client(path, series), series.study, series.series))
        except Exception as err:  # HTTP, connection and DICOM errors alike end the slide with one line
            raise SlideError(path, remote_cause(err) or f"cannot open the DICOMweb series ({_scrubbed(err, path)})") from None

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        # read_region names a level by its pyramid index (log2 of its scale), in that level's own px.
        try:
            region = self._wsi.read_region((x0, y0), self._levels[level].level, (x1 - x0, y1 - y0))
        except Exception as err:  # a damaged frame or a dropped connection
            cause = truncated_instance(self._files) or f"cannot decode level {level} region ({_scrubbed(err, self.path)})"
            raise SlideError(self.path, cause) from None
        return to_rgb(np.asarray(region), self.path)

    def close(self) -> None:
        self._wsi.close()


def truncated_instance(files: list[Path]) -> str | None:
    """"file is truncated (...)" where an instance ends before its pixel data does, else None.

    Deferring the values, pydicom walks the frames' item headers only: a cut file ends before the delimiter
    (it warns), or before the pixel data starts (a header alone).
    """
    for file in files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                dataset = pydicom.dcmread(file, defer_size=DEFERRED_BYTES)
            except EOFError:
                dataset = None
        if dataset is None or "PixelData" not in dataset or any("End of file" in str(w.message) for w in caught):
            return f"file is truncated (instance {file.name} ends before its pixel data)"
    return None


def _scrubbed(err: BaseException, path: Location) -> str:
    """The error's first line with the URLs it may repeat (credentials and all) cut to the shown address."""
    line = first_line(err, typed=True)
    if path.remote:
        line = line.replace(path.address, path.shown).replace(path.address.split("/studies/")[0], path.shown.split("/studies/")[0])
    return line
