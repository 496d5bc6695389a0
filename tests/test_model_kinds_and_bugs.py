"""Model kinds come from a registry that refuses unknown ones and describes a kind as its predictor will; the
encoder publishes its widths; a bug inside a task is reported as a bug, with its traceback in the slide's log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from distributed import LocalCluster

from cerberus_batch.cli import main
from cerberus_batch.errors import BUG, SettingError
from cerberus_batch.model import MODEL_KINDS, InferenceOptions, ModelKind, build_predictor, describe_model
from cerberus_batch.model.encoder import ResNet34Encoder
from cerberus_batch.model.stain import StainPredictor
from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.testing.slides import make_synthetic_slide


def test_unknown_kind_is_refused_in_one_line() -> None:
    with pytest.raises(SettingError) as caught:
        build_predictor("hovernet")
    assert str(caught.value) == "model kind 'hovernet': unknown; expected one of cerberus, stain"


@pytest.mark.parametrize("heads", [None, ["nuclei", "tissue"], ["gland"]])
def test_describe_agrees_with_the_built_cerberus_predictor(parity_model_dir: Path, heads) -> None:
    built = build_predictor("cerberus", parity_model_dir, heads, InferenceOptions(device="cpu"))
    described = describe_model("cerberus", parity_model_dir, heads)
    assert (described.kind, described.heads, dict(described.class_names), described.identity) == (
        built.kind, built.heads, dict(built.class_names), built.identity)


def test_describe_agrees_with_the_built_stain_predictor() -> None:
    built, described = build_predictor("stain"), describe_model("stain")
    assert (described.kind, described.heads, dict(described.class_names), described.identity) == (
        built.kind, built.heads, dict(built.class_names), built.identity)


def test_encoder_publishes_the_widths_and_stride_of_its_features() -> None:
    encoder = ResNet34Encoder().eval()
    with torch.inference_mode():
        features = encoder(torch.zeros(1, 3, 64, 96))
    assert tuple(f.shape[1] for f in features) == encoder.out_channels
    assert features[-1].shape[-2:] == (64 // encoder.output_stride, 96 // encoder.output_stride)


class BrokenPredictor(StainPredictor):
    """The stain model's outputs and identity, but its inference has a programming error."""

    def predict(self, image: np.ndarray, tissue: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return np.stack(image, axis="rows")  # TypeError: an axis is an int


@pytest.mark.e2e
def test_a_bug_in_inference_is_reported_as_a_bug_with_its_traceback(tmp_path: Path, monkeypatch) -> None:
    # The cohort schema takes the registered names: the test registers its own kind, in this process
    # (a threads-only cluster, so the workers see the registry the test changed).
    monkeypatch.setitem(MODEL_KINDS, "broken", ModelKind(lambda weights, heads, options: BrokenPredictor(), MODEL_KINDS["stain"].describe))
    make_synthetic_slide(tmp_path / "slides" / "s.svs", size=(800, 640), seed=2)
    body = {"name": "bug", "output": "out", "slides": [{"path": "slides/s.svs", "id": "s"}], "model": {"kind": "broken"},
            "processing": {"chunk": 432}, "cluster": {"workers": 1}}
    (tmp_path / "cohort.yaml").write_text(yaml.safe_dump(body))
    cohort = load_cohort(tmp_path / "cohort.yaml")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        report = run_cohort(cohort, show_progress=False, cluster=cluster)
    layout = OutputLayout(cohort.output)
    error = json.loads(layout.run_report.read_text())["slides"]["s"]["error"]
    assert report.status == "failed" and error == report.slides["s"].error
    assert error.startswith("TypeError: ") and error.endswith(f"({BUG})") and "\n" not in error
    log = layout.log("s").read_text()
    assert log.startswith(f"s ({cohort.slides[0].path}) failed: {error}\n")
    assert "Traceback (most recent call last)" in log and "in predict" in log and 'axis="rows"' in log


def test_a_bad_slide_stays_one_line_not_a_bug(tmp_path: Path) -> None:
    (tmp_path / "s.svs").write_bytes(b"not a slide")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "s.svs")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert str(tmp_path / "s.svs") in result.output and BUG not in result.output


def test_a_bug_in_a_command_says_so_and_shows_its_traceback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(MODEL_KINDS, "broken", ModelKind(lambda weights, heads, options: [][0], MODEL_KINDS["stain"].describe))
    (tmp_path / "tiles").mkdir()
    make_synthetic_slide(tmp_path / "tiles" / "t.tif", size=(800, 640), seed=1)
    result = CliRunner().invoke(main, ["tile", "--model-kind", "broken", "--input-dir", str(tmp_path / "tiles"),
                                       "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert f"Error: IndexError: list index out of range ({BUG}); its traceback is above" in result.output
    assert "Traceback (most recent call last)" in result.output and "[][0]" in result.output


def test_a_bug_on_one_tile_image_says_so_with_its_traceback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(MODEL_KINDS, "broken", ModelKind(lambda weights, heads, options: BrokenPredictor(), MODEL_KINDS["stain"].describe))
    (tmp_path / "tiles").mkdir()
    make_synthetic_slide(tmp_path / "tiles" / "t.tif", size=(800, 640), seed=1)
    result = CliRunner().invoke(main, ["tile", "--model-kind", "broken", "--input-dir", str(tmp_path / "tiles"),
                                       "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 1 and "0/1 images done" in result.output
    failed = [line for line in result.output.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith(f"FAILED {tmp_path / 'tiles' / 't.tif'}: TypeError: ")
    assert failed[0].endswith(f"({BUG}); its traceback:")
    assert "Traceback (most recent call last)" in result.output and 'axis="rows"' in result.output
