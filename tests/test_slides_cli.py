"""`cerberus-batch inspect` and `cerberus-batch mask` on the real CMU slide and on bad files."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from cerberus_batch.cli import main
from cerberus_batch.slides import open_slide, tissue_mask


def test_inspect_cmu(cmu_slide):
    result = CliRunner().invoke(main, ["inspect", str(cmu_slide)], env={"COLUMNS": "200"})  # no wrapping in the table
    assert result.exit_code == 0, result.output
    for expected in ("aperio", "2220×2967", "0.4990", "read natively", "auto mask", "chunks_kept", "tissue_mm2"):
        assert expected in result.output
    with open_slide(cmu_slide) as slide:
        fraction = tissue_mask(slide.at_mpp()).tissue_fraction
    assert f"{fraction:.1%}" in result.output


def test_inspect_options(cmu_slide):
    args = ["inspect", str(cmu_slide), "--mpp-override", "0.25", "--target-mpp", "1.0", "--chunk", "288", "--mask", "none"]
    result = CliRunner().invoke(main, args, env={"COLUMNS": "200"})  # no wrapping in the table
    assert result.exit_code == 0, result.output
    assert "(override)" in result.output and "555×742 px at 1.0000" in result.output  # 2220×2967 / 4, rounded
    assert "100.0% of the slide (none mask)" in result.output


def test_mask_writes_the_automatic_mask(cmu_slide, tmp_path):
    output = tmp_path / "mask.png"
    result = CliRunner().invoke(main, ["mask", str(cmu_slide), "-o", str(output)])
    assert result.exit_code == 0, result.output
    with open_slide(cmu_slide) as slide:
        expected = tissue_mask(slide.at_mpp()).array
    np.testing.assert_array_equal(np.asarray(Image.open(output)) > 0, expected)


def one_line_error(result, path) -> str:
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0]
    return lines[0]


def test_bad_file(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00 not really a tiff")
    for command in (["inspect", str(bad)], ["mask", str(bad), "-o", str(tmp_path / "m.png")]):
        one_line_error(CliRunner().invoke(main, command), bad)


def test_missing_mpp_says_how_to_fix_it(tmp_path):
    image = tmp_path / "tile.png"
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(image)
    line = one_line_error(CliRunner().invoke(main, ["inspect", str(image)]), image)
    assert "--mpp-override" in line


def test_bad_chunk_is_one_line(cmu_slide):
    result = CliRunner().invoke(main, ["inspect", str(cmu_slide), "--chunk", "1000"])
    assert result.exit_code == 1 and "chunk: 1000" in result.output
    assert len(result.output.strip().splitlines()) == 1
