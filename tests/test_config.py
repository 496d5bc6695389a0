"""Cohort files: what is accepted, and the one-line errors for what is not."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cerberus_batch.cli import main
from cerberus_batch.pipeline.config import CohortError, load_cohort


def write_cohort(folder: Path, **overrides) -> Path:
    slides = folder / "slides"
    slides.mkdir(exist_ok=True)
    for name in ("a.svs", "b.svs"):
        (slides / name).write_bytes(b"placeholder: config validation only checks that the file exists")
    body = {
        "name": "test",
        "output": "out",
        "slides": [{"path": "slides/a.svs"}, {"path": "slides/b.svs", "id": "bee", "mpp": 0.25}],
        "model": {"kind": "stain"},
        "processing": {"chunk": 432},
    }
    body.update(overrides)
    path = folder / "cohort.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_valid_cohort_resolves_paths_relative_to_the_file(tmp_path):
    cohort = load_cohort(write_cohort(tmp_path))
    assert [s.id for s in cohort.slides] == ["a", "bee"]
    assert cohort.slides[0].path == (tmp_path / "slides" / "a.svs").resolve()
    assert cohort.slides[1].mpp == 0.25
    assert cohort.output == (tmp_path / "out").resolve()
    assert cohort.processing.chunk == 432 and cohort.processing.mode == "tile"


def test_glob_and_manifest_forms(tmp_path):
    write_cohort(tmp_path)
    (tmp_path / "masks").mkdir()
    for stem in ("a", "b"):
        (tmp_path / "masks" / f"{stem}.png").write_bytes(b"x")
    globbed = load_cohort(write_cohort(tmp_path, slides={"glob": "slides/*.svs", "masks": "masks/{stem}.png"}))
    assert [s.id for s in globbed.slides] == ["a", "b"]
    # As spreadsheet programs save "CSV UTF-8": with a byte-order mark.
    (tmp_path / "cohort.csv").write_text("\ufeffpath,id,mpp\nslides/a.svs,first,0.5\nslides/b.svs,,\n", encoding="utf-8")
    listed = load_cohort(write_cohort(tmp_path, slides={"manifest": "cohort.csv"}))
    assert [(s.id, s.mpp) for s in listed.slides] == [("first", 0.5), ("b", None)]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"colour": "blue"}, "colour"),
        ({"processing": {"chunk": "big"}}, "processing.chunk"),
        ({"processing": {"chunk": 1000}}, "processing.chunk: Value error, must be a multiple of 144"),
        ({"slides": [{"path": "slides/missing.svs"}]}, "slides.0.path: slide file not found"),
        ({"slides": [{"path": "slides/a.svs", "id": "x"}, {"path": "slides/b.svs", "id": "x"}]}, "slides.1.id: duplicate"),
        ({"slides": [{"path": "slides/a.svs", "id": "../evil"}]}, "slides.0.id: '../evil' is not a safe folder name"),
        ({"slides": [{"path": "slides/a.svs", "id": "/abs"}]}, "slides.0.id"),
        ({"slides": [{"path": "slides/a.svs", "speed": 3}]}, "slides.0.speed"),
        ({"model": {"kind": "cerberus", "weights": "models/nowhere"}}, "model.weights: folder not found"),
        ({"model": {"kind": "cerberus"}}, "model.weights: required"),
        ({"model": {"kind": "hovernet"}}, "model.kind"),
        ({"slides": {"glob": "slides/*.svs", "masks": "masks/{name}.png"}}, "slides.masks: 'masks/{name}.png': the only placeholder is {stem}"),
    ],
)
def test_bad_cohort_names_the_field_and_writes_nothing(tmp_path, overrides, expected):
    path = write_cohort(tmp_path, **overrides)
    with pytest.raises(CohortError) as caught:
        load_cohort(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)) and expected in message
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 1 and expected in result.output
    assert not (tmp_path / "out").exists()
