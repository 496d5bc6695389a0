"""The cohort's slides, as the cohort file lists them: one by one, by a glob, or in a CSV manifest.

Remote slides and masks are looked for where they are read (one line each, the rest of the cohort runs).
"""

from __future__ import annotations

import csv
import glob as globlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from cerberus_batch.errors import first_line
from cerberus_batch.pipeline.config.problems import Problems, explained
from cerberus_batch.pipeline.config.schema import SlideEntry, SlideGlob, SlideManifest, SlideSpec
from cerberus_batch.slide_ids import SAFE_ID_RULE, is_safe_slide_id
from cerberus_batch.slides.location import Location, remote_cause

SLIDE_FIELDS = ("path", "id", "mask")  # the SlideSpec fields the slide checks name


@dataclass
class _Written:
    """Where a slide is written, for its problems: the file, and each field's line and name there."""

    file: str
    spots: dict[str, tuple[Optional[int], str]]  # SlideSpec field -> (line, field as the file names it)
    mpp_fix: str  # what gives a slide written here an mpp

    def problem(self, report: Problems, field: str, text: str) -> None:
        report.add(self.file, *self.spots[field], text)


def slide_entries(raw: Any, base: Path, report: Problems, options: dict[str, Any]) -> list[SlideEntry]:
    """Every slide that validates, its paths resolved; problems with any of them go to `report`."""
    entries: list[SlideEntry] = []
    first_with: dict[str, Location] = {}  # slide id -> the slide that has it
    for spec, written in _slide_specs(raw, base, report, options):
        try:
            slide = Location.parse(spec.path, base, options)
            mask = Location.parse(spec.mask, base, options) if spec.mask is not None else None
        except ValueError as err:
            written.problem(report, "path", str(err))
            continue
        slide_id = spec.id if spec.id is not None else slide.stem
        id_field = "id" if spec.id is not None else "path"
        if not is_safe_slide_id(slide_id):
            named = "" if spec.id is not None else f" (from the file name of {slide})"
            written.problem(report, id_field, f"{slide_id!r} is not a safe folder name ({SAFE_ID_RULE}){named}")
        elif slide_id in first_with:
            written.problem(report, id_field, f"duplicate slide id {slide_id!r} (also the id of {first_with[slide_id]})")
        else:
            first_with[slide_id] = slide
        if not slide.remote and not slide.local.exists():  # a folder is a DICOM slide
            written.problem(report, "path", f"slide file not found: {slide}")
        if mask is not None and not mask.remote and not mask.local.is_file():
            written.problem(report, "mask", f"mask file not found: {mask}")
        entries.append(SlideEntry(id=slide_id, path=slide, mask=mask, mpp=spec.mpp, mpp_override=spec.mpp_override,
                                  mpp_fix=written.mpp_fix, reader=spec.reader))
    return entries


def _slide_specs(raw: Any, base: Path, report: Problems, options: dict[str, Any]) -> list[tuple[SlideSpec, _Written]]:
    if isinstance(raw, list):
        if not raw:
            report.at(("slides",), "no slides listed")
        out = []
        for i, item in enumerate(raw):
            spec = report.validate(SlideSpec, item, ("slides", i))
            if spec is not None:
                spots = {f: (report.line(("slides", i, f)), f"slides.{i}.{f}") for f in SLIDE_FIELDS}
                out.append((spec, _Written(report.path, spots, f"set `mpp:` on slides.{i} in {report.path}")))
        return out
    if isinstance(raw, dict) and "glob" in raw:
        spec = report.validate(SlideGlob, raw, ("slides",))
        return _globbed(spec, base, report, options) if spec is not None else []
    if isinstance(raw, dict) and "manifest" in raw:
        spec = report.validate(SlideManifest, raw, ("slides",))
        return _manifest(spec, base, report, options) if spec is not None else []
    report.at(("slides",), "expected a list of slides, {glob: ...} or {manifest: ...}")
    return []


def _globbed(spec: SlideGlob, base: Path, report: Problems, options: dict[str, Any]) -> list[tuple[SlideSpec, _Written]]:
    try:
        found = _matches(spec.glob, base, options)
    except Exception as err:  # a bucket prefix: the store's or the network's error
        report.at(("slides", "glob"), f"cannot list {Location.parse(spec.glob)}: {remote_cause(err) or first_line(err, typed=True)}")
        return []
    if not found:
        report.at(("slides", "glob"), f"no file matches {spec.glob!r}")
        return []
    glob_line = report.line(("slides", "glob"))
    written = _Written(report.path, {
        "path": (glob_line, "slides.glob"), "id": (glob_line, "slides.glob"),
        "mask": (report.line(("slides", "masks")), "slides.masks"),
    }, f"set `mpp:` beside `glob:` in {report.path}")
    out = []
    for slide in found:
        try:
            mask = spec.masks.format(stem=slide.stem) if spec.masks else None
        except (KeyError, IndexError, ValueError):
            report.at(("slides", "masks"), f"{spec.masks!r}: the only placeholder is {{stem}}")
            return []
        out.append((SlideSpec(path=slide.address, mask=mask, mpp=spec.mpp, mpp_override=spec.mpp_override, reader=spec.reader), written))
    return out


def _matches(pattern: str, base: Path, options: dict[str, Any]) -> list[Location]:
    """The slides a glob names: local files, or the objects under a bucket prefix."""
    if "://" in pattern:
        return Location.parse(pattern, storage_options=options).matches()
    pattern = pattern if Path(pattern).is_absolute() else str(base / pattern)
    return [Location.parse(found) for found in sorted(globlib.glob(pattern, recursive=True))]


def _manifest(spec: SlideManifest, base: Path, report: Problems, options: dict[str, Any]) -> list[tuple[SlideSpec, _Written]]:
    manifest = Location.parse(spec.manifest, base, options)
    if not manifest.remote and not manifest.local.is_file():
        report.at(("slides", "manifest"), f"file not found: {manifest}")
        return []
    try:
        # utf-8-sig: spreadsheet programs start their "CSV UTF-8" with a byte-order mark.
        reader = csv.DictReader(io.StringIO(manifest.read_bytes().decode("utf-8-sig"), newline=""))
        rows = [(reader.line_num, row) for row in reader]  # line_num: the row's (last) line
    except UnicodeDecodeError:
        report.at(("slides", "manifest"), f"{manifest} is not UTF-8 text")
        return []
    except Exception as err:  # a remote manifest: the store's or the network's error
        report.at(("slides", "manifest"), f"cannot read {manifest}: {remote_cause(err) or first_line(err, typed=True)}")
        return []
    if not rows:
        report.at(("slides", "manifest"), f"{manifest} lists no slides")
    out = []
    for line, row in rows:
        row = {k.strip(): v.strip() for k, v in row.items() if k and v and v.strip()}
        # Manifest paths are relative to the manifest itself.
        for field in ("path", "mask"):
            if field in row and "://" not in row[field]:  # a URL stands as written (its protocol is checked later)
                row[field] = manifest.join(row[field]).address
        try:
            written = _Written(str(manifest), {f: (line, f) for f in SLIDE_FIELDS}, f"fill its `mpp` column in {manifest}")
            out.append((SlideSpec.model_validate(row), written))
        except ValidationError as err:
            for loc, text in explained(err, SlideSpec):
                report.add(str(manifest), line, ".".join(map(str, loc)), text)
    return out
