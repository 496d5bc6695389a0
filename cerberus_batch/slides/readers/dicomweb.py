"""Which addresses name a DICOMweb series: a rule of its own, so telling a DICOM slide from the others
never loads the DICOM reader (wsidicom takes a second to import, in every worker that opens a slide)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A series as IDC and PACS give it: <DICOMweb root>/studies/<study UID>/series/<series UID>
DICOMWEB_SERIES = re.compile(r"\A(?P<root>https?://.+?)/studies/(?P<study>[0-9.]+)/series/(?P<series>[0-9.]+)/?\Z")


@dataclass(frozen=True)
class DicomWebSeries:
    root: str  # the server's DICOMweb root, e.g. https://host/dicom-web
    study: str
    series: str


def dicomweb_series(address: str) -> DicomWebSeries | None:
    """The series a DICOMweb address names, or None when `address` is no DICOMweb series URL."""
    found = DICOMWEB_SERIES.match(address)
    return DicomWebSeries(found["root"], found["study"], found["series"]) if found else None
