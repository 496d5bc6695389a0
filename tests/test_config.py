"""Cohort files: what is accepted, and for what is not, every problem at once, one line each."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cerberus_batch.cli import main
from cerberus_batch.errors import CohortError
from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.slide_ids import is_safe_slide_id


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
        ({"processing": {"chunk": 1000}}, "processing.chunk: must be a multiple of 144"),
        ({"slides": [{"path": "slides/missing.svs"}]}, "slides.0.path: slide file not found"),
        ({"slides": [{"path": "slides/a.svs", "id": "x"}, {"path": "slides/b.svs", "id": "x"}]}, "slides.1.id: duplicate"),
        ({"slides": [{"path": "slides/a.svs", "id": "../evil"}]}, "slides.0.id: '../evil' is not a safe folder name"),
        ({"slides": [{"path": "slides/a.svs", "id": "/abs"}]}, "slides.0.id"),
        ({"slides": [{"path": "slides/a.svs", "id": "abc\n"}]}, "slides.0.id: 'abc\\n' is not a safe folder name"),
        ({"slides": []}, "slides: no slides listed"),
        ({"slides": [{"path": "slides/a.svs", "speed": 3}]}, "slides.0.speed"),
        ({"model": {"kind": "cerberus", "weights": "models/nowhere"}, "processing": {"chunk": 432, "tile": 432}},
         "model.weights: folder not found"),
        ({"model": {"kind": "cerberus"}, "processing": {"chunk": 432, "tile": 432}},
         "model.weights: required for model kind 'cerberus': a folder holding the official weights.tar and settings.yml, "
         "unchanged, from the authors' Cerberus release (Graham et al., Medical Image Analysis 2022; CC BY-NC-SA 4.0, "
         "non-commercial use), checked by `cerberus-batch check-model DIR`; or model kind 'stain' (no weights)"),
        ({"model": {"kind": "hovernet"}}, "model.kind"),
        ({"processing": {"chunk": 432, "tissue_mask": "given"}}, "processing.tissue_mask: 'given', but these slides have no mask: 'a', 'bee'"),
        ({"slides": {"glob": "slides/*.svs", "masks": "masks/{name}.png"}}, "slides.masks: 'masks/{name}.png': the only placeholder is {stem}"),
    ],
)
@pytest.mark.e2e
def test_bad_cohort_names_the_field_and_writes_nothing(tmp_path, overrides, expected):
    path = write_cohort(tmp_path, **overrides)
    with pytest.raises(CohortError) as caught:
        load_cohort(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}:") and expected in message
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 1 and expected in result.output
    assert not (tmp_path / "out").exists()


def test_every_problem_is_listed_with_its_line(tmp_path):
    write_cohort(tmp_path)  # the slide files
    path = tmp_path / "cohort.yaml"
    path.write_text("""\
name: test
output: out
slides:
  - path: slides/a.svs
    id: "abc\\n"
  - path: slides/missing.svs
    mask: masks/missing.png
  - path: slides/b.svs
    id: missing
  - {path: slides/b.svs, speed: 3}
model:
  kind: cerberus
  weights: models/nowhere
processing:
  batchsize: 4
  chunk: 1000
cluster:
  kind: slurm
  slurm: {cors: 2}
colour: blue
""")
    here = tmp_path.resolve()
    expected = [
        f"{path}:5: slides.0.id: 'abc\\n' is not a safe folder name (letters, digits, '.', '_', '-'; no path separators)",
        f"{path}:6: slides.1.path: slide file not found: {here}/slides/missing.svs",
        f"{path}:7: slides.1.mask: mask file not found: {here}/masks/missing.png",
        f"{path}:9: slides.2.id: duplicate slide id 'missing' (also the id of {here}/slides/missing.svs)",
        f"{path}:10: slides.3.speed: unknown key; valid keys: path, id, mask, mpp, mpp_override, reader",
        # Checked although other sections are invalid: the model section itself is valid.
        f"{path}:13: model.weights: folder not found: {here}/models/nowhere",
        f"{path}:15: processing.batchsize: unknown key; did you mean batch_size?",
        f"{path}:16: processing.chunk: must be a multiple of 144 (output cell size), got 1000",
        f"{path}:19: cluster.slurm.cors: unknown key; did you mean cores?",
        f"{path}:20: colour: unknown key; valid keys: name, output, slides, model, processing, cluster, storage_options",
    ]
    with pytest.raises(CohortError) as caught:
        load_cohort(path)
    assert str(caught.value).splitlines() == expected
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 1 and result.output == "Error: " + "\n".join(expected) + "\n"
    assert not (tmp_path / "out").exists()


BASE = """\
name: test
output: out
slides:
  - path: slides/a.svs
model:
  kind: stain
"""


@pytest.mark.parametrize(
    "more, expected",
    [
        ("processing:\n  batchsize: 4\n", ["cohort.yaml:8: processing.batchsize: unknown key; did you mean batch_size?"]),
        ("modle:\n  kind: stain\n", ["cohort.yaml:7: modle: unknown key; did you mean model?"]),
        (
            "cluster:\n  kind: kubernetes\n  kubernetes:\n    image: x\n    volumes:\n      data: {mount: /d, claim: c, readonly: true}\n",
            ["cohort.yaml:12: cluster.kubernetes.volumes.data.readonly: unknown key; did you mean read_only?"],
        ),
        # A missing key is on no line: the problem points at its parent's, or at none for a top-level key.
        ("cluster:\n  kind: kubernetes\n  kubernetes:\n    namespace: lab\n", ["cohort.yaml:9: cluster.kubernetes.image: Field required"]),
        ("processing:\n  chunk: 432: 864\n", ["cohort.yaml:8: not valid YAML: mapping values are not allowed here"]),
        ("model:\n  kind: [stain\n", ["cohort.yaml:9: not valid YAML: while parsing a flow sequence (line 8), expected ',' or ']', but got '<stream end>'"]),
    ],
)
def test_problems_name_the_line_as_the_path_was_given(tmp_path, monkeypatch, more, expected):
    write_cohort(tmp_path)
    (tmp_path / "cohort.yaml").write_text(BASE + more)
    monkeypatch.chdir(tmp_path)  # messages name the file as the user typed it
    with pytest.raises(CohortError) as caught:
        load_cohort("cohort.yaml")
    assert str(caught.value).splitlines() == expected


def test_top_level_keys_missing_have_no_line(tmp_path, monkeypatch):
    (tmp_path / "cohort.yaml").write_text("model:\n  kind: stain\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CohortError) as caught:
        load_cohort("cohort.yaml")
    assert str(caught.value).splitlines() == [f"cohort.yaml: {key}: Field required" for key in ("name", "output", "slides")]


def test_manifest_problems_name_the_csv_line_after_the_cohort_files(tmp_path):
    write_cohort(tmp_path)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(
        "path,id,mpp\n"
        "slides/a.svs,first,0.5\n"
        "slides/missing.svs,,\n"
        "slides/b.svs,first,\n"
        "slides/b.svs,bad/id,\n"
        ",nopath,\n"
    )
    path = write_cohort(tmp_path, slides={"manifest": "cohort.csv"}, processing={"chunk": 432, "batchsize": 2})
    here = tmp_path.resolve()
    with pytest.raises(CohortError) as caught:
        load_cohort(path)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"{path}:") and lines[0].endswith(": processing.batchsize: unknown key; did you mean batch_size?")
    assert lines[1:] == [
        f"{here}/cohort.csv:3: path: slide file not found: {here}/slides/missing.svs",
        f"{here}/cohort.csv:4: id: duplicate slide id 'first' (also the id of {here}/slides/a.svs)",
        f"{here}/cohort.csv:5: id: 'bad/id' is not a safe folder name (letters, digits, '.', '_', '-'; no path separators)",
        f"{here}/cohort.csv:6: path: Field required",
    ]


def test_globbed_slides_are_checked_together(tmp_path):
    for name in ("x/a.svs", "x/a b.svs", "y/a.svs"):
        (tmp_path / "slides" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "slides" / name).write_bytes(b"placeholder")
    path = tmp_path / "cohort.yaml"
    path.write_text('name: test\noutput: out\nslides:\n  glob: "slides/**/*.svs"\n  masks: "masks/{stem}.png"\nmodel:\n  kind: stain\n')
    here = tmp_path.resolve()
    with pytest.raises(CohortError) as caught:
        load_cohort(path)
    assert str(caught.value).splitlines() == [
        f"{path}:4: slides.glob: 'a b' is not a safe folder name (letters, digits, '.', '_', '-'; no path separators)"
        f" (from the file name of {here}/slides/x/a b.svs)",
        f"{path}:4: slides.glob: duplicate slide id 'a' (also the id of {here}/slides/x/a.svs)",
        f"{path}:5: slides.masks: mask file not found: {here}/masks/a b.png",
        f"{path}:5: slides.masks: mask file not found: {here}/masks/a.png",
        f"{path}:5: slides.masks: mask file not found: {here}/masks/a.png",
    ]


@pytest.mark.parametrize("slide_id, safe", [
    ("abc", True), ("A.b_c-1", True), ("12", True),
    ("abc\n", False), ("\nabc", False), ("a\nb", False), ("-abc", False), (".hidden", False), ("a/b", False), ("", False),
])
def test_safe_id_is_the_whole_string(slide_id, safe):
    assert is_safe_slide_id(slide_id) == safe
