"""A chunk reads only the slide pixels its kept outputs depend on (`Predictor.input_needed`), and its kept
outputs are exactly those of a chunk read whole."""

from __future__ import annotations

import numpy as np
import pytest

from cerberus_batch.grid import CELL, CONTEXT, tissue_runs
from cerberus_batch.model import CerberusPredictor, InferenceOptions
from cerberus_batch.model.stain import StainPredictor
from cerberus_batch.slides import open_slide
from cerberus_batch.tasks.infer import read_chunk


@pytest.mark.parametrize("seed", range(5))
def test_tissue_runs_cover_the_tissue_cells_once_each(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tissue = rng.random((9, 11)) < (0.3, 0.6, 0.9, 1.0, 0.5)[seed]
    tissue[:, 4] = tissue[:, 5]  # some equal spans on several rows
    covered = np.zeros(tissue.shape, int)
    for y, x, h, w in tissue_runs(tissue):
        assert y % CELL == x % CELL == h % CELL == w % CELL == 0
        covered[y // CELL : (y + h) // CELL, x // CELL : (x + w) // CELL] += 1
    np.testing.assert_array_equal(covered, tissue.astype(int))
    assert len(tissue_runs(np.ones((9, 11), bool))) == 1


class CountingRead:
    """A slide view's `read`, counting the px it returns."""

    def __init__(self, read) -> None:
        self.read, self.pixels = read, 0

    def __call__(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        self.pixels += w * h
        return self.read(x, y, w, h)


def kept_outputs_of_whole_and_needed_reads(predictor, cmu_slide, box, tissue):
    view = open_slide(cmu_slide).at_mpp(0.5)
    counting = CountingRead(view.read)
    x, y, w, h = box
    whole = predictor.predict(read_chunk(view.read, x, y, w, h), tissue)
    boxes = predictor.input_needed(tissue)
    image = read_chunk(counting, x, y, w, h, boxes)
    unread = np.ones(image.shape[:2], bool)
    for top, left, height, width in boxes:
        unread[top : top + height, left : left + width] = False
    stained = image.copy()
    # Noise where nothing was read: the kept outputs must not see it either
    stained[unread] = np.random.default_rng(0).integers(0, 256, (int(unread.sum()), 3))
    pixels = np.kron(tissue, np.ones((CELL, CELL), bool))
    for needed in predictor.predict(image, tissue), predictor.predict(stained, tissue):
        for head, out in whole.items():
            kept = tissue if head == "Patch-Class" else pixels
            np.testing.assert_array_equal(needed[head][:, kept], out[:, kept], err_msg=head)
    return counting.pixels / ((w + 2 * CONTEXT) * (h + 2 * CONTEXT))


def test_the_stain_model_reads_only_around_its_tissue_cells(cmu_slide) -> None:
    # A 5 x 6 cell chunk on CMU-1-Small-Region with a ragged tissue pattern: runs of several widths, a lone cell.
    tissue = np.zeros((5, 6), bool)
    tissue[0, 1:4] = tissue[1, 1:4] = tissue[2, 0:2] = tissue[3, 5] = tissue[4, 2:6] = True
    share = kept_outputs_of_whole_and_needed_reads(StainPredictor(), cmu_slide, (576, 1008, 6 * CELL, 5 * CELL), tissue)
    assert share < 0.75


def test_cerberus_reads_only_its_passes(cmu_slide, parity_model_dir) -> None:
    # Patch mode: a pass per tissue cell, each reading its cell and the 152-px context around it.
    tissue = np.zeros((4, 4), bool)
    tissue[0, 0] = tissue[2, 3] = True
    options = InferenceOptions(mode="patch")
    predictor = CerberusPredictor(parity_model_dir, heads=["Nuclei-INST", "Patch-Class"], options=options)
    share = kept_outputs_of_whole_and_needed_reads(predictor, cmu_slide, (720, 1152, 4 * CELL, 4 * CELL), tissue)
    assert share < 0.75
