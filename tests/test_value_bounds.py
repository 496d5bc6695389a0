"""Every value of a cohort file is checked against plausible bounds before any work: out-of-range values
are refused by `validate` and `run` in one line each (file, line, field), and a slide whose size at the
processing resolution is absurd is refused at planning in one line, never with a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cerberus_batch.cli import main
from cerberus_batch.testing.slides import make_synthetic_slide

COHORT = """\
name: bounds
output: out
slides:
  - path: slides/a.svs
    mpp: 0.25
model:
  kind: stain
processing:
  mpp: 0.5
  chunk: 1008
  tile: 1008
  batch_size: 8
cluster:
  kind: local
  workers: 1
"""


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "a.svs"
    make_synthetic_slide(path, size=(800, 640), seed=1)
    return path


def cohort_with(folder: Path, slide: Path, line: str, replacement: str, text: str = COHORT) -> Path:
    (folder / "slides").mkdir(exist_ok=True)
    (folder / "slides" / "a.svs").symlink_to(slide)
    assert f"\n{line}\n" in text
    path = folder / "cohort.yaml"
    path.write_text(text.replace(f"\n{line}\n", f"\n{replacement}\n"))
    return path


def refused_in_one_line(command: str, path: Path) -> str:
    """The one line `command` refuses the cohort with, having written nothing."""
    result = CliRunner().invoke(main, [command, str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert not (path.parent / "out").exists()  # `run` refused before the output folder, so before any cluster
    return lines[0].removeprefix("Error: ")


@pytest.mark.parametrize(
    "line, replacement, at, expected",
    [
        ("  mpp: 0.5", "  mpp: 1e9", 9, "processing.mpp: 1e+09 µm/px is outside 0.05–20 µm/px"),
        ("  mpp: 0.5", "  mpp: 1e-9", 9, "processing.mpp: 1e-09 µm/px is outside 0.05–20 µm/px"),
        ("  mpp: 0.5", "  mpp: .nan", 9, "processing.mpp: nan µm/px is outside"),
        ("    mpp: 0.25", "    mpp: 1e9", 5, "slides.0.mpp: 1e+09 µm/px is outside 0.05–20 µm/px"),
        ("    mpp: 0.25", "    mpp: 1e-9", 5, "slides.0.mpp: 1e-09 µm/px is outside 0.05–20 µm/px"),
        ("  chunk: 1008", "  chunk: 999999936", 10, "processing.chunk: 999999936 px is more than 7920 px"),
        ("  tile: 1008", "  tile: 999999936", 11, "processing.tile: 999999936 px is more than 7920 px"),
        ("  batch_size: 8", "  batch_size: 1000000000", 12, "processing.batch_size: must be at most 1024, got 1000000000"),
        ("  batch_size: 8", "  batch_size: 0", 12, "processing.batch_size: must be at least 1, got 0"),
        ("  workers: 1", "  workers: 1000000000", 15, "cluster.workers: must be at most 1024, got 1000000000"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_out_of_range_values_are_refused_in_one_line(tmp_path, slide, command, line, replacement, at, expected):
    path = cohort_with(tmp_path, slide, line, replacement)
    refused = refused_in_one_line(command, path)
    assert refused.startswith(f"{path}:{at}: {expected}"), refused


def test_the_chunk_bound_depends_on_the_stored_dtype(tmp_path, slide):
    # float16 probabilities take twice the bytes of uint8 ones, so fewer px fit in a chunk's budget.
    path = cohort_with(tmp_path, slide, "  batch_size: 8", "  batch_size: 8\n  dtype: float16\n  chunk: 7920")
    assert "processing.chunk: 7920 px is more than 6048 px" in refused_in_one_line("validate", path)


@pytest.mark.e2e
@pytest.mark.parametrize("form", ["glob", "manifest"])
@pytest.mark.parametrize("mpp", ["1e9", "1e-9"])
def test_slide_mpp_overrides_of_every_form_are_bounded(tmp_path, slide, form, mpp):
    if form == "glob":
        slides, field = f"slides:\n  glob: slides/*.svs\n  mpp: {mpp}", f"{tmp_path / 'cohort.yaml'}:5: slides.mpp"
    else:
        (tmp_path / "cohort.csv").write_text(f"path,mpp\nslides/a.svs,{mpp}\n")
        slides, field = "slides:\n  manifest: cohort.csv", f"{tmp_path / 'cohort.csv'}:2: mpp"
    path = cohort_with(tmp_path, slide, "slides:\n  - path: slides/a.svs\n    mpp: 0.25", slides)
    for command in ("validate", "run"):
        refused = refused_in_one_line(command, path)
        assert refused.startswith(f"{field}: {float(mpp):g} µm/px is outside 0.05–20 µm/px"), refused


def plan_problems(path: Path) -> list[str]:
    """`validate`'s PROBLEM lines for a cohort whose values are in range but whose slides cannot be planned."""
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    return [line for line in result.output.splitlines() if line.startswith("PROBLEM")]


def test_a_slide_smaller_than_a_processing_pixel_is_refused_at_planning(tmp_path, slide):
    (tmp_path / "slides").mkdir()
    # 4 px at 0.05 µm/px are 0.2 µm: not one 20-µm processing px (ZeroDivisionError in the mask before).
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / "slides" / "speck.png")
    text = COHORT.replace("  - path: slides/a.svs\n    mpp: 0.25\n", "  - path: slides/a.svs\n  - {path: slides/speck.png, mpp: 0.05}\n")
    path = cohort_with(tmp_path, slide, "  mpp: 0.5", "  mpp: 20\n  chunk: 144\n  tile: 144", text.replace("  chunk: 1008\n  tile: 1008\n", ""))
    [problem] = plan_problems(path)
    assert problem == f"PROBLEM speck: {(tmp_path / 'slides' / 'speck.png').resolve()}: 4×4 px at 0.05 µm/px (fallback) are 0×0 px at 20 µm/px: " \
                      "less than one processing px; check its mpp"


def test_a_slide_longer_than_any_glass_slide_is_refused_at_planning(tmp_path, slide):
    (tmp_path / "slides").mkdir()
    # 5000 px at 20 µm/px are 10 cm: no glass slide is that long, so its mpp is wrong (and at 0.5 µm/px
    # it would be 200,000 px long).
    Image.fromarray(np.full((40, 5000, 3), 200, np.uint8)).save(tmp_path / "slides" / "strip.png")
    text = COHORT.replace("    mpp: 0.25\n", "    mpp: 0.25\n  - {path: slides/strip.png, mpp: 20}\n")
    [problem] = plan_problems(cohort_with(tmp_path, slide, "output: out", "output: out", text))
    assert problem == f"PROBLEM strip: {(tmp_path / 'slides' / 'strip.png').resolve()}: 5000×40 px at 20 µm/px (fallback) are 100 × 0.8 mm: " \
                      "longer than any glass slide (80 mm); check its mpp"


@pytest.mark.parametrize("option, value", [("--target-mpp", "1e9"), ("--target-mpp", "1e-9"), ("--mpp-override", "1e9")])
def test_inspect_bounds_its_resolutions(slide, option, value):
    result = CliRunner().invoke(main, ["inspect", str(slide), option, value])
    assert result.exit_code == 2 and isinstance(result.exception, (SystemExit, type(None))), result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == f"Error: Invalid value for '{option}': {float(value):g} µm/px is outside 0.05–20 µm/px, " \
                        "the resolutions microscopes record", result.output


@pytest.mark.e2e
def test_run_fails_only_the_absurd_slide_in_one_line(tmp_path, slide):
    (tmp_path / "slides").mkdir()
    Image.fromarray(np.full((40, 5000, 3), 200, np.uint8)).save(tmp_path / "slides" / "strip.png")
    text = COHORT.replace("    mpp: 0.25\n", "    mpp: 0.25\n  - {path: slides/strip.png, mpp: 20}\n")
    path = cohort_with(tmp_path, slide, "  workers: 1", "  workers: 1\n  dashboard_address: ':0'", text)
    result = CliRunner().invoke(main, ["run", "--no-progress", str(path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    failed = [line for line in result.output.splitlines() if "strip" in line]
    assert len(failed) == 1 and "longer than any glass slide (80 mm); check its mpp" in failed[0], result.output
    assert "1/2 slides done, 1 failed" in result.output
