"""Post-activation against a plain numpy softmax."""

from __future__ import annotations

import numpy as np
import torch

from cerberus_batch.model import class_index, class_probabilities, inst_probabilities, probabilities


def _softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(logits - logits.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


LOGITS = np.random.default_rng(7).normal(scale=3, size=(2, 7, 5, 4)).astype(np.float32)


def test_inst_keeps_inner_and_contour() -> None:
    inst = LOGITS[:, :3]
    got = inst_probabilities(torch.from_numpy(inst)).numpy()
    np.testing.assert_allclose(got, _softmax(inst, 1)[:, 1:3], atol=1e-6)
    np.testing.assert_allclose(probabilities("Lumen-INST", torch.from_numpy(inst[0])).numpy(), got[0], atol=1e-7)


def test_class_probabilities_and_index() -> None:
    got = class_probabilities(torch.from_numpy(LOGITS)).numpy()
    np.testing.assert_allclose(got, _softmax(LOGITS, 1), atol=1e-6)
    np.testing.assert_array_equal(class_index(torch.from_numpy(LOGITS)).numpy(), LOGITS.argmax(1))
    np.testing.assert_allclose(probabilities("Patch-Class", torch.from_numpy(LOGITS)).numpy(), got, atol=1e-7)


def test_half_precision_logits_give_float32() -> None:
    assert class_probabilities(torch.from_numpy(LOGITS).bfloat16()).dtype == torch.float32
