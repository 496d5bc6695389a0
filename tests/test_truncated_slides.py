"""A file cut short (an interrupted copy) says so, in one line, whichever reader opens it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from test_pipeline import write_cohort
from test_slide_readers import convert_to_dicom
from cerberus_batch.cli import main

CUT = 200_000  # bytes kept of CMU-1-Small-Region.svs (1.9 MB): its directories lie past the cut


@pytest.fixture
def truncated_svs(tmp_path, cmu_slide):
    path = tmp_path / "slides" / "truncated.svs"
    path.parent.mkdir()
    path.write_bytes(cmu_slide.read_bytes()[:CUT])
    return path


def one_line_saying_truncated(output: str, path) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: file is truncated ("), output


@pytest.mark.parametrize("reader", ["auto", "tiffslide", "openslide"])
def test_inspect_says_a_cut_svs_is_truncated(truncated_svs, reader):
    result = CliRunner().invoke(main, ["inspect", str(truncated_svs), "--reader", reader], terminal_width=300)
    assert result.exit_code == 1
    one_line_saying_truncated(result.output, truncated_svs)
    assert f"the file has {CUT:,}" in result.output


def test_validate_says_a_cut_svs_is_truncated(tmp_path, truncated_svs):
    cohort = write_cohort(tmp_path, [{"path": str(truncated_svs)}])
    result = CliRunner().invoke(main, ["validate", str(cohort)], terminal_width=300)
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 1 and "file is truncated" in problems[0], result.output


@pytest.mark.parametrize("kept", [1000, CUT])  # the header alone; the header and some frames
def test_inspect_says_a_cut_dicom_instance_is_truncated(tmp_path, cmu_slide, kept):
    (instance,) = convert_to_dicom(cmu_slide, tmp_path / "whole")
    folder = tmp_path / "cut"
    folder.mkdir()
    (folder / instance.name).write_bytes(instance.read_bytes()[:kept])
    result = CliRunner().invoke(main, ["inspect", str(folder)], terminal_width=300)
    assert result.exit_code == 1
    one_line_saying_truncated(result.output, folder)
    assert instance.name in result.output
