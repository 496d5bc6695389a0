"""CerberusPredictor: tile mode equals the reference patch mode on a real slide region."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiffslide

from cerberus_batch.grid import CELL, CONTEXT
from cerberus_batch.model import CerberusPredictor, InferenceOptions
from cerberus_batch.model.predictor import Predictor

CPU = InferenceOptions(device="cpu")

DATA = Path(__file__).parent / "data"
CELLS = 3  # output cells per side: patch mode costs ~4 s per cell on 2 CPU cores
ORIGIN = (800, 700)  # level-0 (x, y) inside the tissue of CMU-1-Small-Region


@pytest.fixture(scope="module")
def region(cmu_slide: Path) -> np.ndarray:
    size = CELLS * CELL + 2 * CONTEXT
    with tiffslide.TiffSlide(cmu_slide) as slide:
        return np.asarray(slide.read_region(ORIGIN, 0, (size, size)).convert("RGB"))


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def test_probabilities_match_reference_logits(parity_model_dir: Path) -> None:
    """The served model (BatchNorms folded, channels-last) against the reference network's logits."""
    with np.load(DATA / "forward_reference.npz") as npz:
        reference = dict(npz)
    predictor = CerberusPredictor(parity_model_dir, options=CPU)
    for index, image in enumerate(reference["images"]):
        result = predictor.predict(image)
        for key, got in result.items():
            expected = _softmax(reference[key][index])
            if key.endswith("-INST"):
                expected = expected[1:3]
            elif key == "Patch-Class":
                expected = expected[:, None, None]
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3, err_msg=key)
            if key.endswith("-TYPE"):
                np.testing.assert_array_equal(got.argmax(0), reference[key][index].argmax(0))


@pytest.fixture(scope="module")
def patch_result(parity_model_dir: Path, region: np.ndarray) -> dict[str, np.ndarray]:
    return CerberusPredictor(parity_model_dir, options=InferenceOptions(mode="patch", device="cpu")).predict(region)


def _assert_same_as_patch(result: dict[str, np.ndarray], patch: dict[str, np.ndarray]) -> None:
    assert result.keys() == patch.keys()
    for key, expected in patch.items():
        assert result[key].shape == expected.shape and result[key].dtype == np.float32
        np.testing.assert_allclose(result[key], expected, rtol=0, atol=1e-3, err_msg=key)
        if key == "Patch-Class":
            np.testing.assert_array_equal(result[key].argmax(0), expected.argmax(0))
        elif key.endswith("-TYPE"):
            assert (result[key].argmax(0) == expected.argmax(0)).mean() >= 0.999, key


@pytest.mark.parametrize("tile", [1008, 288])  # one tile; four tiles of three shapes
def test_tile_mode_matches_patch_mode(
    parity_model_dir: Path, region: np.ndarray, patch_result: dict[str, np.ndarray], tile: int
) -> None:
    predictor = CerberusPredictor(parity_model_dir, options=InferenceOptions(tile=tile, batch_size=2, device="cpu"))
    _assert_same_as_patch(predictor.predict(region), patch_result)


def test_patch_mode_outputs_are_probabilities(patch_result: dict[str, np.ndarray]) -> None:
    size = CELLS * CELL
    assert patch_result["Nuclei-INST"].shape == (2, size, size)
    assert patch_result["Nuclei-TYPE"].shape == (7, size, size)
    assert patch_result["Gland-TYPE"].shape == (3, size, size)
    assert patch_result["Patch-Class"].shape == (9, CELLS, CELLS)
    for key, prob in patch_result.items():
        assert prob.min() >= 0 and prob.max() <= 1, key
        total = prob.sum(0)
        if key.endswith("-INST"):  # background, the dropped channel, holds the rest
            assert total.max() <= 1 + 1e-6, key
        else:
            np.testing.assert_allclose(total, 1, atol=1e-5, err_msg=key)


def test_protocol_and_heads(parity_model_dir: Path, region: np.ndarray) -> None:
    nuclei: Predictor = CerberusPredictor(parity_model_dir, ["nuclei"], CPU)
    full = CerberusPredictor(parity_model_dir, options=CPU)
    assert nuclei.kind == "cerberus"
    assert nuclei.heads == ("Nuclei-INST", "Nuclei-TYPE")
    assert dict(nuclei.class_names) == {
        "Nuclei-TYPE": ("nolabel", "neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective")
    }
    assert full.class_names["Gland-TYPE"] == ("nolabel", "gland", "surface-epi")
    assert full.class_names["Patch-Class"][8] == "adipose"
    assert nuclei.identity != full.identity
    assert CerberusPredictor(parity_model_dir, ["Nuclei", "Nuclei#TYPE"], InferenceOptions(mode="patch")).identity == (
        nuclei.identity
    )
    small = region[: CELL + 2 * CONTEXT, : 2 * CELL + 2 * CONTEXT]
    assert set(nuclei.predict(small)) == {"Nuclei-INST", "Nuclei-TYPE"}
    assert nuclei.predict(small)["Nuclei-TYPE"].shape == (7, CELL, 2 * CELL)


@pytest.mark.parametrize(
    ("shape", "dtype", "reason"),
    [
        ((448, 450, 3), np.uint8, "must be positive multiples of 144"),
        ((304, 448, 3), np.uint8, "must be positive multiples of 144"),
        ((448, 448, 3), np.float32, "uint8"),
        ((448, 448), np.uint8, "uint8"),
    ],
)
def test_rejects_bad_images(parity_model_dir: Path, shape: tuple, dtype: type, reason: str) -> None:
    predictor = CerberusPredictor(parity_model_dir, ["tissue"], CPU)
    with pytest.raises(ValueError, match=reason):
        predictor.predict(np.zeros(shape, dtype))


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"mode": "wsi"}, "mode"),
        ({"tile": 1000}, "multiple of 144"),
        ({"amp": "fp16"}, "amp"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_rejects_bad_options(parity_model_dir: Path, options: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        CerberusPredictor(parity_model_dir, options=InferenceOptions(device="cpu", **options))


def test_bf16_on_cpu_close_to_float32(parity_model_dir: Path, region: np.ndarray) -> None:
    exact = CerberusPredictor(parity_model_dir, ["tissue"], CPU).predict(region)
    bf16 = CerberusPredictor(parity_model_dir, ["tissue"], InferenceOptions(device="cpu", amp="bf16")).predict(region)
    assert bf16["Patch-Class"].dtype == np.float32
    np.testing.assert_allclose(bf16["Patch-Class"], exact["Patch-Class"], atol=0.05)
