"""The compiled store passes (quantise, pooled quantise, argmax) store exactly what numpy's
clip-scale-round, 2 x 2 mean and argmax would: ties, edges and NaN included."""

from __future__ import annotations

import numpy as np
import pytest

from cerberus_batch.model.factory import build_predictor
from cerberus_batch.model.naming import CLASS_NAMES
from cerberus_batch.quantisation import quantise
from cerberus_batch.slides.slide import open_slide
from cerberus_batch.storage.maps import map_specs
from cerberus_batch.tasks.infer import predict_chunk, stored_maps
from cerberus_batch.vocabulary import HEAD_MAPS

CERBERUS_HEADS = tuple(HEAD_MAPS)
HEAD_OF = {stored.name: head for head, maps in HEAD_MAPS.items() for stored in maps}


def numpy_quantise(prob: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)


def numpy_pool(prob: np.ndarray) -> np.ndarray:
    c, h, w = prob.shape
    return prob.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4), dtype=np.float32)


def test_quantise_rounds_as_numpy_at_every_tie_and_edge():
    ties = (np.arange(255, dtype=np.float64) + 0.5) / 255
    near = ties.astype(np.float32)
    for _ in range(8):  # 8 float32 steps either side of each tie
        near = np.unique(np.concatenate([near, np.nextafter(near, np.float32(2)), np.nextafter(near, np.float32(-1))]))
    assert ((near * np.float32(255)) % 1 == 0.5).sum() >= 255  # products that are exact halves are among them
    edges = np.array([0, -0.0, 1, np.nextafter(np.float32(1), np.float32(2)), -1e-30, 1e-45, 2, -2, np.inf, -np.inf], np.float32)
    spread = np.random.default_rng(0).uniform(-0.1, 1.1, 100_000).astype(np.float32)
    values = np.concatenate([near, edges, spread])
    for dtype in (np.float32, np.float64):
        np.testing.assert_array_equal(quantise(values.astype(dtype)), numpy_quantise(values.astype(dtype)))
    grid = spread[: 6 * 50 * 40].reshape(6, 50, 40)[:, ::2, 1::3]  # not contiguous
    np.testing.assert_array_equal(quantise(grid), numpy_quantise(grid))


@pytest.fixture(scope="module")
def cerberus_shaped(cmu_slide) -> dict[str, np.ndarray]:
    """Every Cerberus head filled from the stain model's real CMU probabilities; class heads repeat
    channels, so argmax meets exact ties on every px, and some px are NaN."""
    view = open_slide(cmu_slide).at_mpp(0.5)
    outputs = predict_chunk(view.read, build_predictor("stain"), (0, 0, 864, 1152))
    inner, contour = outputs["Nuclei-INST"]
    background, nucleus = outputs["Nuclei-TYPE"]
    nuclei_type = np.stack([background, nucleus, inner, nucleus, contour, inner * 0.5, contour])
    nuclei_type[3, :5, :7] = np.nan
    cells = outputs["Patch-Class"]
    return {
        "Nuclei-INST": outputs["Nuclei-INST"], "Nuclei-TYPE": nuclei_type,
        "Gland-INST": np.stack([nucleus, inner]), "Gland-TYPE": np.stack([inner, nucleus, nucleus]),
        "Lumen-INST": np.stack([contour, background]), "Patch-Class": np.concatenate([cells] * 4 + [cells[:1]]),
    }


@pytest.mark.parametrize("empty_cells, inside", [
    ([(1, 2)], (1100, 800)),  # the slide ends inside the last cells
    ([], (1152, 864)),  # all tissue, all on the slide
    ([], (1099, 801)),  # odd: a pooled px on the slide's edge averages its outside half as background
    ([(0, 1), (1, 2), (2, 2), (3, 2), (5, 0), (5, 1), (5, 3), (7, 5)], (1099, 801)),  # many runs of tissue cells
])
def test_stored_maps_equal_numpy_pooling_quantising_and_argmax(cerberus_shaped, empty_cells, inside):
    """Made whole with numpy, the slide's outside and then the empty cells zeroed (the expectation)."""
    specs = map_specs(CERBERUS_HEADS, CLASS_NAMES)
    stored = stored_maps(cerberus_shaped, specs, empty_cells, inside)
    past = np.ones((1152, 864), bool)
    past[: inside[0], : inside[1]] = False
    for spec in specs:
        prob = cerberus_shaped[HEAD_OF[spec.name]].copy()
        if spec.downsample < 144:
            prob[:, past] = 0
        if spec.downsample == 2:
            prob = numpy_pool(prob)
        expected = numpy_quantise(prob) if spec.probability else np.argmax(prob, axis=0).astype(np.uint8)
        side = 144 // spec.downsample
        for row, col in empty_cells:
            expected[..., row * side : (row + 1) * side, col * side : (col + 1) * side] = 0
        assert stored[spec.name].dtype == np.uint8
        np.testing.assert_array_equal(stored[spec.name], expected, err_msg=spec.name)
    assert (stored["nuclei_class"][:5, :7] == 3).all()  # NaN wins argmax, as numpy's
    assert len(np.unique(stored["gland_class"])) == 2  # the repeated channel never wins its tie


def test_pooling_adds_in_numpys_order():
    """Blocks whose float32 sum depends on the order of its additions (a lower row that cancels itself)."""
    prob = np.random.default_rng(1).uniform(0, 1, (3, 64, 64)).astype(np.float32)
    prob[:, 1::2, 0::2] *= 1e8
    prob[:, 1::2, 1::2] = -prob[:, 1::2, 0::2]
    stored = stored_maps({"Gland-INST": prob[:2], "Gland-TYPE": prob}, map_specs(("Gland-INST", "Gland-TYPE"), CLASS_NAMES), [], (64, 64))
    pooled = numpy_pool(prob)
    np.testing.assert_array_equal(stored["gland_prob"], numpy_quantise(pooled[:2]))
    np.testing.assert_array_equal(stored["gland_class"], np.argmax(pooled, axis=0).astype(np.uint8))
