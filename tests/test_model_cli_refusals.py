"""A model we refuse stops `run`, `validate` and `tile` with one line, before any inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import write_cohort
from model_variants import copy_model_dir, flip_tensor_bytes, model_dir_with_heads
from PIL import Image

from cerberus_batch.cli import main

DEMO_SLIDE = Path(__file__).parent.parent / "configs" / "demo" / "slides" / "demo-a.svs"


@pytest.fixture(scope="module")
def refused_models(tmp_path_factory: pytest.TempPathFactory, parity_model_dir: Path) -> dict[str, tuple[Path, str]]:
    """Model directories, each with the start of the line that refuses it."""
    root = tmp_path_factory.mktemp("refused")
    four_classes = model_dir_with_heads(root / "four_tissue_classes", "Patch-Class", 4)
    flipped = copy_model_dir(parity_model_dir, root / "flipped")
    member = flip_tensor_bytes(flipped / "weights.tar")
    return {
        "4-class Patch-Class": (four_classes, f"{four_classes / 'settings.yml'}: Patch-Class has 4 outputs"),
        "flipped weights": (flipped, f"{flipped / 'weights.tar'}: corrupted: {member} fails its CRC check"),
    }


def _cohort_file(folder: Path, model_dir: Path) -> Path:
    return write_cohort(folder, [{"path": str(DEMO_SLIDE), "id": "a"}], output=str(folder / "out"),
                        model={"kind": "cerberus", "weights": str(model_dir)})


def _one_line(output: str) -> str:
    assert len(output.strip().splitlines()) == 1, output
    return output.strip()


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["4-class Patch-Class", "flipped weights"])
def test_run_refuses_before_any_slide(tmp_path: Path, refused_models: dict, model: str) -> None:
    model_dir, line = refused_models[model]
    result = CliRunner().invoke(main, ["run", str(_cohort_file(tmp_path, model_dir)), "--no-progress"])
    assert result.exit_code == 1
    assert _one_line(result.output).startswith(f"Error: {line}"), result.output
    assert not any((tmp_path / "out" / folder).exists() for folder in ("maps", "tables", "plans"))


@pytest.mark.parametrize("model", ["4-class Patch-Class", "flipped weights"])
def test_validate_names_the_model_problem(tmp_path: Path, refused_models: dict, model: str) -> None:
    model_dir, line = refused_models[model]
    result = CliRunner().invoke(main, ["validate", str(_cohort_file(tmp_path, model_dir))])
    assert result.exit_code == 1
    problems = [text for text in result.output.splitlines() if text.startswith("PROBLEM")]
    assert len(problems) == 1 and problems[0].startswith(f"PROBLEM model: {line}"), result.output


@pytest.mark.parametrize("model", ["4-class Patch-Class", "flipped weights"])
def test_tile_refuses_before_any_image(tmp_path: Path, refused_models: dict, model: str) -> None:
    model_dir, line = refused_models[model]
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((200, 240, 3), 200, np.uint8)).save(tmp_path / "images" / "a.png")
    output = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["tile", "--model", str(model_dir), "--input-dir", str(tmp_path / "images"), "--output-dir", str(output)]
    )
    assert result.exit_code == 1
    assert _one_line(result.output).startswith(f"Error: {line}"), result.output
    assert not output.exists()
