"""Slides, masks and manifests behind s3:// (moto's S3 server) and https:// (a local Range server):
the same maps and tables as the local file, and each failure one line naming the address without secrets."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import zarr
from distributed import LocalCluster
from PIL import Image

from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.slides import open_slide
from cerberus_batch.slides.location import Location, fetched
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.zarr_maps import open_slide_maps
from cerberus_batch.testing.servers import (
    DENIED_PREFIX, FAKE_KEYS, free_port, range_server, s3_checks_credentials, s3_server,
)
from cerberus_batch.testing.slides import make_synthetic_slide
from conftest import mask_file
from helpers import write_cohort

SECRET = "s3cr3t-signature"

pytestmark = pytest.mark.e2e  # each runs a cohort over S3 or HTTP


@pytest.fixture(scope="module")
def stores(tmp_path_factory, cmu_slide):
    """The CMU slide in bucket `lab` of a local S3 server (found through AWS_ENDPOINT_URL, as a user's
    environment would say) and under the root of a local Range server."""
    root = tmp_path_factory.mktemp("served")
    shutil.copy(cmu_slide, root / "cmu.svs")
    with pytest.MonkeyPatch.context() as env, s3_server() as endpoint, range_server(root) as http:
        for key, value in {**FAKE_KEYS, "AWS_ENDPOINT_URL": endpoint}.items():
            env.setenv(key, value)
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="lab")
        s3.upload_file(str(cmu_slide), "lab", "slides/cmu.svs")
        # Threads, not processes: the workers see the environment set here.
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
            yield {"s3": s3, "http": http, "cluster": cluster}


def run(folder: Path, slides: list[dict], cluster, **processing):
    cohort = write_cohort(folder, slides, processing={"chunk": 432, "tissue_mask": "given", **processing})
    return run_cohort(load_cohort(cohort), show_progress=False, cluster=cluster)


def small_region_mask(folder: Path) -> str:
    mask = np.zeros((297, 222), np.uint8)  # the slide (2220 x 2967 px) at 1/10 scale
    mask[120:160, 90:130] = 255  # a box spanning chunk borders
    Image.fromarray(mask).save(mask_file(folder))
    return str(folder / "masks" / "mask.png")


def stored(output: Path, slide_id: str) -> dict[str, np.ndarray]:
    """Every array of the slide's map group (levels included)."""
    group = zarr.open_group(str(OutputLayout(output).maps(slide_id)), mode="r")
    return {path: np.asarray(array[:]) for path, array in group.members(max_depth=None) if isinstance(array, zarr.Array)}


def tables(output: Path) -> dict[str, pd.DataFrame]:
    found = {}
    for file in sorted((output / "tables").rglob("*.parquet")):
        frame = pq.read_table(file).to_pandas()
        for column in frame.columns:  # geometry (WKB) as text, so rows sort by every column
            if frame[column].dtype == object and len(frame) and isinstance(frame[column].iloc[0], bytes):
                frame[column] = frame[column].map(bytes.hex)
        rows = ["|".join(map(str, row)) for row in frame.itertuples(index=False)]  # some columns hold dicts, which do not sort
        found[str(file.relative_to(output))] = frame.iloc[np.argsort(rows, kind="stable")].reset_index(drop=True)
    return found


def test_s3_and_https_slides_give_the_local_maps_and_tables(tmp_path, stores, cmu_slide):
    mask = small_region_mask(tmp_path)
    http = stores["http"]
    runs = {
        "local": str(cmu_slide),
        "s3": "s3://lab/slides/cmu.svs",
        # A presigned-style query and userinfo: read with, shown without.
        "https": f"http://reader:{SECRET}@127.0.0.1:{http.server_port}/cmu.svs?X-Signature={SECRET}",
    }
    outputs = {}
    for kind, path in runs.items():
        report = run(tmp_path / kind, [{"path": path, "id": "cmu", "mask": mask}], stores["cluster"])
        assert report.status == "ok", report.slides
        outputs[kind] = tmp_path / kind / "out"
        written = json.loads((outputs[kind] / "run_report.json").read_text())["slides"]["cmu"]
        if kind == "local":
            assert written["fetched_bytes"] == 0
        else:  # the slide's bytes, fetched a block at a time (the whole 1.9 MB file is one block)
            assert 0 < written["fetched_bytes"] <= 2 * cmu_slide.stat().st_size, written
            assert written["fetched_requests"] >= 1
        for file in outputs[kind].rglob("*"):
            if file.is_file() and file.suffix in (".json", ".log", ".html", ".csv"):
                assert SECRET not in file.read_text(errors="replace"), file
    local_maps, local_tables = stored(outputs["local"], "cmu"), tables(outputs["local"])
    assert local_maps and local_tables
    for kind in ("s3", "https"):
        maps = stored(outputs[kind], "cmu")
        assert maps.keys() == local_maps.keys()
        for name, array in local_maps.items():
            np.testing.assert_array_equal(maps[name], array, err_msg=f"{kind}: {name}")
        found = tables(outputs[kind])
        assert found.keys() == local_tables.keys()
        for name, frame in local_tables.items():
            pd.testing.assert_frame_equal(found[name], frame)
    attrs = dict(open_slide_maps(OutputLayout(outputs["https"]).maps("cmu")).attrs)
    assert attrs["slide_path"] == f"http://127.0.0.1:{http.server_port}/cmu.svs"
    assert attrs["source"] == {"size": cmu_slide.stat().st_size, "etag": attrs["source"]["etag"]} and attrs["source"]["etag"]


def test_a_replaced_object_is_recomputed(tmp_path, stores, cmu_slide):
    mask = small_region_mask(tmp_path)
    slides = [{"path": "s3://lab/replaced/cmu.svs", "id": "cmu", "mask": mask}]
    stores["s3"].upload_file(str(cmu_slide), "lab", "replaced/cmu.svs")
    first = run(tmp_path, slides, stores["cluster"])
    assert first.slides["cmu"].chunks_computed == first.slides["cmu"].chunks > 0
    again = run(tmp_path, slides, stores["cluster"])
    assert again.slides["cmu"].chunks_skipped == again.slides["cmu"].chunks  # same object: resumed
    # Same size, other bytes (a rescanned slide under the old name): its ETag changes.
    data = bytearray(cmu_slide.read_bytes())
    data[-1] ^= 0xFF
    stores["s3"].put_object(Bucket="lab", Key="replaced/cmu.svs", Body=bytes(data))
    replaced = run(tmp_path, slides, stores["cluster"])
    assert replaced.slides["cmu"].chunks_computed == replaced.slides["cmu"].chunks > 0


def test_each_remote_failure_is_one_line_and_the_rest_finish(tmp_path, stores, cmu_slide, capsys):
    mask = small_region_mask(tmp_path)
    http = stores["http"]
    bad = {
        "missing": ("s3://lab/slides/missing.svs", "object not found"),
        "nobucket": ("s3://no-such-bucket/cmu.svs", "bucket not found"),
        "denied": (f"http://127.0.0.1:{http.server_port}{DENIED_PREFIX}cmu.svs?token={SECRET}", "access denied"),
        "down": (f"http://user:{SECRET}@127.0.0.1:{free_port()}/cmu.svs", "server unreachable"),
    }
    slides = [{"path": path, "id": slide_id, "mask": mask} for slide_id, (path, _) in bad.items()]
    slides.append({"path": "s3://lab/slides/cmu.svs", "id": "good", "mask": mask})
    report = run(tmp_path, slides, stores["cluster"])
    out = tmp_path / "out"
    assert report.slides["good"].status == "done"
    assert OutputLayout(out).maps("good").is_dir()
    for slide_id, (path, cause) in bad.items():
        error = report.slides[slide_id].error
        shown = path.split("?")[0].replace(f"user:{SECRET}@", "")
        assert report.slides[slide_id].status == "failed"
        assert error.count("\n") == 0 and error.startswith(f"SlideError: {shown}: ") and cause in error, error
        assert SECRET not in (out / "logs" / f"{slide_id}.log").read_text()
        assert not OutputLayout(out).maps(slide_id).exists() and not (out / "plans" / f"{slide_id}.json").exists()
    assert SECRET not in (out / "run_report.json").read_text() + capsys.readouterr().out


def test_remote_mask_manifest_and_glob_over_a_bucket_prefix(tmp_path, stores, cmu_slide):
    s3 = stores["s3"]
    mask = Path(small_region_mask(tmp_path))
    for name in ("a.svs", "b.svs"):
        s3.upload_file(str(cmu_slide), "lab", f"cohort/{name}")
        s3.upload_file(str(mask), "lab", f"cohort-masks/{Path(name).stem}.png")
    s3.put_object(Bucket="lab", Key="cohort/notes.txt", Body=b"not a slide")
    s3.put_object(Bucket="lab", Key="lists/slides.csv", Body=b"path,id,mask\n../cohort/a.svs,first,../cohort-masks/a.png\n")
    globbed = load_cohort(write_cohort(tmp_path, {"glob": "s3://lab/cohort/*.svs", "masks": "s3://lab/cohort-masks/{stem}.png"},
                                       file="glob.yaml"))
    assert [(s.id, str(s.path), str(s.mask)) for s in globbed.slides] == [
        ("a", "s3://lab/cohort/a.svs", "s3://lab/cohort-masks/a.png"),
        ("b", "s3://lab/cohort/b.svs", "s3://lab/cohort-masks/b.png"),
    ]
    listed = load_cohort(write_cohort(tmp_path, {"manifest": "s3://lab/lists/slides.csv"}, file="list.yaml"))
    assert [(s.id, str(s.path), str(s.mask)) for s in listed.slides] == [
        ("first", "s3://lab/cohort/a.svs", "s3://lab/cohort-masks/a.png")]
    report = run(tmp_path / "run", [{"path": "s3://lab/cohort/a.svs", "id": "a", "mask": "s3://lab/cohort-masks/a.png"}],
                 stores["cluster"])
    assert report.status == "ok" and report.slides["a"].chunks == report.slides["a"].chunks_computed > 0
    given = np.asarray(Image.open(tmp_path / "run" / "out" / "masks" / "a.png"))
    assert given.any() and not given.all()  # the bucket's mask, not the automatic one


def test_inspect_shows_the_source_and_its_identity_without_secrets(stores, cmu_slide):
    from click.testing import CliRunner

    from cerberus_batch.cli import main

    port = stores["http"].server_port
    stat = cmu_slide.stat()
    etag = hashlib.md5(cmu_slide.read_bytes()).hexdigest()  # what the Range server sends; moto's is the same MD5
    cases = {
        str(cmu_slide): (str(cmu_slide), f"size {stat.st_size}, mtime_ns {stat.st_mtime_ns}"),
        "s3://lab/slides/cmu.svs": ("s3://lab/slides/cmu.svs", f"size {stat.st_size}, etag"),
        f"http://reader:{SECRET}@127.0.0.1:{port}/cmu.svs?X-Signature={SECRET}": (
            f"http://127.0.0.1:{port}/cmu.svs", f"size {stat.st_size}, etag"),
    }
    for address, (shown, identity) in cases.items():
        result = CliRunner(env={"COLUMNS": "400"}).invoke(main, ["inspect", address])  # rich reads its width there
        assert result.exit_code == 0, result.output
        rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.output.splitlines() if line.count("│") == 3}
        assert rows["source"] == shown and rows["reader"] == "tiffslide", result.output
        assert rows["identity"].startswith(identity) and (address == str(cmu_slide) or etag in rows["identity"]), rows
        assert SECRET not in result.output


def test_a_bad_s3_credential_and_an_unsupported_format_over_a_url_are_one_line_each(tmp_path, stores, cmu_slide, capsys):
    import boto3

    s3, mask = stores["s3"], small_region_mask(tmp_path)
    endpoint = s3.meta.endpoint_url
    s3.put_object(Bucket="lab", Key="slides/notes.txt", Body=b"not a slide\n" * 100)
    iam = boto3.client("iam", endpoint_url=endpoint)  # a reader with a real key, made while no credential is checked
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    slides = [{"path": "s3://lab/slides/cmu.svs", "id": "remote", "mask": mask},
              {"path": "s3://lab/slides/notes.txt", "id": "notes", "mask": mask},
              {"path": str(cmu_slide), "id": "local", "mask": mask}]

    def run_with(secret: str, folder: Path):
        cohort = write_cohort(folder, slides, processing={"chunk": 432, "tissue_mask": "given"},
                              storage_options={"key": key["AccessKeyId"], "secret": secret})
        return run_cohort(load_cohort(cohort), show_progress=False, cluster=stores["cluster"])

    with s3_checks_credentials(endpoint):
        good = run_with(key["SecretAccessKey"], tmp_path / "good")  # the store checks keys: the right one reads
        bad = run_with(SECRET, tmp_path / "bad")
    assert good.slides["remote"].status == good.slides["local"].status == "done"
    assert good.slides["notes"].status == "failed" and good.slides["notes"].error == (
        "SlideError: s3://lab/slides/notes.txt: unsupported format: over a URL, slides are read as TIFF (SVS, TIFF, "
        "OME-TIFF, NDPI), PNG, JPEG or a DICOMweb series; copy other formats to a local folder, where OpenSlide reads them")
    assert bad.slides["local"].status == "done"
    out = tmp_path / "bad" / "out"
    for slide_id, shown in (("remote", "s3://lab/slides/cmu.svs"), ("notes", "s3://lab/slides/notes.txt")):
        error = bad.slides[slide_id].error
        assert bad.slides[slide_id].status == "failed", bad.slides
        assert error.count("\n") == 0 and error.startswith(f"SlideError: {shown}: access denied (check the credentials"), error
        assert not OutputLayout(out).maps(slide_id).exists() and not (out / "plans" / f"{slide_id}.json").exists()
    written = "".join(f.read_text(errors="replace") for f in out.rglob("*") if f.is_file() and f.suffix in (".json", ".log", ".html", ".csv"))
    assert SECRET not in written + capsys.readouterr().out and key["AccessKeyId"] not in written


def test_what_a_read_fetches_is_counted_whichever_thread_fetches_it(tmp_path, stores):
    """zarr fetches tiles in its own IO thread: the count is the server's, request for request."""
    http = stores["http"]
    slide = make_synthetic_slide(http.root / "synthetic.tif").path  # 5 MB: more blocks than the open reads
    location = Location.parse(f"{http.url}/synthetic.tif")
    with fetched(location) as opening:
        opened = open_slide(location)
    before = http.requests
    with fetched(location) as got:
        w, h = opened.info.dimensions
        opened.read_level(0, 0, 0, w, h)
    opened.close()
    assert got.requests == http.requests - before > 0
    assert 0 < got.bytes and opening.bytes + got.bytes <= slide.stat().st_size  # each block fetched once


def test_a_server_gone_mid_run_fails_its_slide_in_one_line_and_the_rerun_resumes(tmp_path, stores, cmu_slide):
    http = stores["http"]
    make_synthetic_slide(http.root / "gone.tif")  # 5 MB: its chunks fetch blocks its plan did not
    slides = [{"path": f"{http.url}/gone.tif", "id": "remote"}, {"path": str(cmu_slide), "id": "local"}]
    plan = tmp_path / "out" / "plans" / "remote.json"
    # Down from the moment the slide's plan is written: every read its chunks make finds the connection closed.
    http.down = plan.exists
    try:
        first = run(tmp_path, slides, stores["cluster"], tissue_mask="none", chunk=1008)
    finally:
        http.down = lambda: False
    error = first.slides["remote"].error
    assert first.slides["remote"].status == "failed" and first.slides["local"].status == "done", first.slides
    assert error.count("\n") == 0 and error.startswith(f"SlideError: {http.url}/gone.tif: cannot read level ") and \
        "server unreachable" in error, error
    assert http.dropped >= 3  # the chunk was tried again (Dask's retries) before the slide failed
    again = run(tmp_path, slides, stores["cluster"], tissue_mask="none", chunk=1008)  # the server is back
    assert again.status == "ok", again.slides
    remote = again.slides["remote"]
    # Chunks done before the drop are kept (none here: each needs a block fetched after it), the rest computed.
    assert remote.chunks_skipped == first.slides["remote"].chunks_computed and remote.chunks_computed + remote.chunks_skipped == remote.chunks
    assert again.slides["local"].chunks_skipped == again.slides["local"].chunks
