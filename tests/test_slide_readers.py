"""OpenSlide and DICOM readers on real data: CMU-1-Small-Region as DICOM files (wsidicomizer), as a
DICOMweb series (a real Orthanc server started here) and forced through OpenSlide gives the maps and
tables of the tiffslide run; a Hamamatsu VMS (only OpenSlide reads it) runs like any slide."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
import pytest
import tiffslide
from click.testing import CliRunner
from PIL import Image

from cerberus_batch.cli import main
from cerberus_batch.slides import SlideError, open_slide
from cerberus_batch.slides.location import Location
from cerberus_batch.slides.sources import source_identity
from cerberus_batch.storage.tables import read_table
from cerberus_batch.storage.zarr_maps import map_arrays, open_slide_maps
from conftest import mask_file
from helpers import run_ok, write_cohort

ORTHANC = Path("/usr/sbin/Orthanc")  # Debian's orthanc; its DICOMweb plugin comes with orthanc-dicomweb
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
KINDS = ("nuclei", "glands", "lumens", "tissue")


def convert_to_dicom(slide: Path, folder: Path) -> list[Path]:
    from wsidicomizer import WsiDicomizer

    folder.mkdir(parents=True)
    WsiDicomizer.convert(slide, folder, workers=1, include_label=False, include_overview=False, include_thumbnail=False)
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory, cmu_slide) -> Path:
    folder = tmp_path_factory.mktemp("dicom") / "cmu_dicom"
    convert_to_dicom(cmu_slide, folder)
    return folder


@contextmanager
def orthanc(home: Path, dicom_folder: Path, users: dict[str, str] | None = None) -> Iterator[str]:
    """The folder's series on a real Orthanc (started here, stopped by its PID; asking for HTTP basic
    credentials when `users` are given): its DICOMweb series URL."""
    if not (ORTHANC.exists() and DICOMWEB_PLUGIN.exists()):
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (home / "orthanc.json").write_text(json.dumps({
        "Name": "cerberus-test", "StorageDirectory": str(home / "db"), "IndexDirectory": str(home / "db"),
        "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }))
    with (home / "orthanc.log").open("wb") as log:
        server = subprocess.Popen([str(ORTHANC), str(home / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener()
    if users:
        user, password = next(iter(users.items()))
        opener.addheaders = [("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())]
    try:
        for _ in range(100):
            try:
                opener.open(f"{root}/system", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, (home / "orthanc.log").read_text()
                time.sleep(0.1)
        for instance in sorted(dicom_folder.iterdir()):
            opener.open(urllib.request.Request(f"{root}/instances", data=instance.read_bytes()), timeout=30).close()
        header = pydicom.dcmread(next(dicom_folder.iterdir()), stop_before_pixels=True)
        yield f"{root}/dicom-web/studies/{header.StudyInstanceUID}/series/{header.SeriesInstanceUID}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def dicomweb_series(tmp_path_factory, dicom_folder) -> Iterator[str]:
    with orthanc(tmp_path_factory.mktemp("orthanc"), dicom_folder) as series:
        yield series


def make_vms(rgb: np.ndarray, folder: Path, mpp: float) -> Path:
    """A Hamamatsu VMS: one JPEG with a restart marker per MCU row (OpenSlide indexes it by them), a map JPEG
    and the key file. Sides are whole 8-px MCUs: OpenSlide reads nothing of a partial last MCU."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rgb)
    image.save(folder / "slide.jpg", quality=90, restart_marker_rows=1, subsampling=0)
    image.reduce(8).save(folder / "slide_map.jpg", quality=90, restart_marker_rows=1, subsampling=0)
    h, w = rgb.shape[:2]
    keys = {"NoLayers": 1, "NoJpegColumns": 1, "NoJpegRows": 1, "ImageFile": "slide.jpg", "MapFile": "slide_map.jpg",
            "PhysicalWidth": round(w * mpp * 1000), "PhysicalHeight": round(h * mpp * 1000)}  # nm
    vms = folder / "slide.vms"
    vms.write_text("[Virtual Microscope Specimen]\n" + "".join(f"{k}={v}\n" for k, v in keys.items()))
    return vms


def level0(slide) -> np.ndarray:
    w, h = slide.info.dimensions
    return slide.read_level(0, 0, 0, w, h)


def test_dicom_folder_and_dicomweb_read_the_svs_pixels(cmu_slide, dicom_folder, dicomweb_series):
    expected = np.asarray(tiffslide.TiffSlide(cmu_slide).zarr_group["0"][:])  # wsidicomizer re-wraps the JPEG tiles
    for address in (dicom_folder, dicomweb_series):
        with open_slide(address) as slide:
            assert slide.info.reader == "dicom" and slide.info.mpp == (0.499, 0.499)  # from the pixel spacing
            assert slide.info.level_dimensions == ((2220, 2967),)
            assert np.array_equal(level0(slide), expected), address


def run_stain(folder: Path, slide: dict, cluster, **processing) -> Path:
    """The stain model on a small given-mask box of the slide; returns the output folder."""
    mask = np.zeros((297, 222), np.uint8)  # the slide (2220 x 2967 px) at 1/10 scale
    mask[120:160, 90:130] = 255
    Image.fromarray(mask).save(mask_file(folder))
    slides = [{"id": "cmu", "mask": "masks/mask.png", **slide}]
    return run_ok(write_cohort(folder, slides, processing={"chunk": 432, "tissue_mask": "given", **processing}), cluster)


def outputs(output: Path) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    maps = {name: np.asarray(array[:]) for name, array in map_arrays(open_slide_maps(output / "maps" / "cmu")).items()}
    tables = {}
    for kind in KINDS:
        table = read_table(output, kind, ["cmu"])
        rows = table.drop(columns="geometry").assign(wkt=table.geometry.to_wkt())
        tables[kind] = sorted(map(tuple, rows.astype(str).to_numpy().tolist()))
    return maps, tables


@pytest.mark.e2e
def test_every_reader_gives_the_tiffslide_maps_and_tables(tmp_path, cluster, cmu_slide, dicom_folder, dicomweb_series):
    runs = {
        "tiffslide": ({"path": str(cmu_slide)}, {}),
        "dicom folder": ({"path": str(dicom_folder)}, {}),
        "dicomweb": ({"path": dicomweb_series}, {}),
        "openslide": ({"path": str(cmu_slide)}, {"reader": "openslide"}),  # forced for the whole cohort
    }
    results = {}
    for name, (slide, processing) in runs.items():
        (tmp_path / name).mkdir()
        output = run_stain(tmp_path / name, slide, cluster, **processing)
        results[name] = outputs(output)
        assert open_slide_maps(output / "maps" / "cmu").attrs["reader"] == name.split()[0].replace("dicomweb", "dicom")
    maps, tables = results.pop("tiffslide")
    assert maps and sum(len(rows) for rows in tables.values()) > 0
    for name, (other_maps, other_tables) in results.items():
        assert other_maps.keys() == maps.keys(), name
        for array in maps:
            assert np.array_equal(other_maps[array], maps[array]), (name, array)
        assert other_tables == tables, name


def test_a_vms_slide_runs_through_validate_run_and_inspect(tmp_path, cmu_slide):
    rgb = np.asarray(tiffslide.TiffSlide(cmu_slide).zarr_group["0"][:2960, :2216])  # whole 8-px MCUs
    vms = make_vms(np.ascontiguousarray(rgb), tmp_path / "slides", mpp=0.499)
    with pytest.raises(tiffslide.TiffFileError):
        tiffslide.TiffSlide(vms)  # only OpenSlide reads it
    with open_slide(vms) as slide:
        assert slide.info.reader == "openslide" and slide.info.vendor == "hamamatsu"
        assert slide.info.mpp == (0.499, 0.499) and slide.info.level_dimensions[0] == (2216, 2960)
        assert np.array_equal(level0(slide), np.asarray(Image.open(vms.parent / "slide.jpg")))
    runner = CliRunner()
    inspected = runner.invoke(main, ["inspect", str(vms)], terminal_width=200)
    assert inspected.exit_code == 0, inspected.output
    assert "openslide" in inspected.output and "0.4990 × 0.4990 (metadata)" in inspected.output
    mask = np.zeros((296, 222), np.uint8)
    mask[120:150, 90:120] = 255
    Image.fromarray(mask).save(mask_file(tmp_path))
    cohort = write_cohort(tmp_path, [{"path": str(vms), "mask": "masks/mask.png"}], processing={"chunk": 432, "tissue_mask": "given"})
    validated = runner.invoke(main, ["validate", str(cohort)], terminal_width=200)
    assert validated.exit_code == 0, validated.output
    assert "slide" in validated.output
    run = runner.invoke(main, ["run", str(cohort), "--no-progress"], terminal_width=200)
    assert run.exit_code == 0, run.output
    attrs = open_slide_maps(tmp_path / "out" / "maps" / "slide").attrs
    assert attrs["reader"] == "openslide" and attrs["mpp"] == 0.499  # level 0 read natively at its own mpp


def test_an_unsupported_format_and_a_two_slide_dicom_folder_are_one_line_each(tmp_path, cmu_slide, dicom_folder):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a slide\n")
    two = tmp_path / "two_slides"
    two.mkdir()
    for copy in ("a", "b"):  # two conversions: two series (each gets its own UIDs)
        for instance in convert_to_dicom(cmu_slide, tmp_path / copy):
            shutil.copy(instance, two / f"{copy}-{instance.name}")
    for address, reason in ((notes, "unsupported format"), (two, "DICOM folder holds 2 slides")):
        with pytest.raises(SlideError) as refused:
            open_slide(address)
        message = str(refused.value)
        assert message.startswith(f"{address}: {reason}") and "\n" not in message, message
    slides = [{"path": str(notes)}, {"path": str(two)}, {"path": str(dicom_folder), "id": "good"}]
    cohort = write_cohort(tmp_path, slides, processing={"chunk": 1008})
    validated = CliRunner().invoke(main, ["validate", str(cohort)], terminal_width=300)
    assert validated.exit_code == 1, validated.output
    for address, reason in ((notes, "unsupported format"), (two, "DICOM folder holds 2 slides")):
        lines = [line for line in validated.output.splitlines() if f"{address}:" in line]
        assert len(lines) == 1 and reason in lines[0], validated.output


def test_dicomweb_credentials_from_the_address_or_storage_options_never_shown(tmp_path, cmu_slide, dicom_folder):
    secret = "pw-s3cr3t"
    (tmp_path / "orthanc").mkdir()
    with orthanc(tmp_path / "orthanc", dicom_folder, users={"reader": secret}) as series:
        expected = np.asarray(tiffslide.TiffSlide(cmu_slide).zarr_group["0"][:])
        token = base64.b64encode(f"reader:{secret}".encode()).decode()
        given = {
            "userinfo": Location.parse(series.replace("http://", f"http://reader:{secret}@")),
            "storage_options": Location.parse(series, storage_options={"headers": {"Authorization": f"Basic {token}"}}),
        }
        for how, location in given.items():
            with open_slide(location) as slide:
                assert np.array_equal(level0(slide), expected), how
            assert source_identity(location)["sop_instances"] == len(list(dicom_folder.iterdir())), how
        for location in (Location.parse(series), Location.parse(series.replace("http://", "http://reader:wrong@"))):
            for step in (open_slide, source_identity):
                with pytest.raises(SlideError) as refused:
                    step(location)
                message = str(refused.value)
                assert message.startswith(f"{series}: access denied (check the credentials") and "\n" not in message, message
                assert "wrong" not in message and secret not in message


def test_opening_and_reading_a_tiff_slide_loads_neither_other_reader(cmu_slide):
    """Each worker process opens its slides: a TIFF must not pay for importing wsidicom (about a second) or OpenSlide."""
    check = (
        "import sys; from cerberus_batch.slides import open_slide; from cerberus_batch.slides.location import Location;"
        "from cerberus_batch.slides.sources import source_identity; s = sys.argv[1];"
        "source_identity(Location.parse(s)); open_slide(s).read_level(0, 0, 0, 64, 64);"
        "print(sorted(m for m in ('wsidicom', 'pydicom', 'openslide') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", check, str(cmu_slide)], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
