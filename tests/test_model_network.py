"""The network is the Cerberus network: checkpoint layout, reference logits, selective decoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from parity_model import make_parity_model_dir

from cerberus_batch.model import CerberusNet, load_model

DATA = Path(__file__).parent / "data"
CROP = slice(152, 296)  # the reference keeps the centre 144 px of a 448 patch
RELEASED = yaml.safe_load((DATA / "settings.yml").read_text())["model_kwargs"]["decoder_kwargs"]


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(DATA / "forward_reference.npz") as npz:
        return dict(npz)


def _forward(model: torch.nn.Module, images: np.ndarray) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    return {key: value.numpy() for key, value in logits.items()}


def test_state_dict_matches_released_layout() -> None:
    layout = json.loads((DATA / "state_dict_layout.json").read_text())
    model = CerberusNet(RELEASED)  # the released six decoders
    assert [[name, list(t.shape)] for name, t in model.state_dict().items()] == layout
    assert len(layout) == 558


@pytest.mark.parametrize("prefix", ["", "module."])
def test_logits_match_reference(tmp_path: Path, prefix: str, reference: dict[str, np.ndarray]) -> None:
    model = load_model(make_parity_model_dir(tmp_path, prefix), device="cpu")
    logits = _forward(model, reference["images"])
    assert list(logits) == ["Gland-INST", "Gland-TYPE", "Lumen-INST", "Nuclei-INST", "Nuclei-TYPE", "Patch-Class"]
    for key, value in logits.items():
        if key == "Patch-Class":
            assert value.shape == (2, 9, 1, 1)
            np.testing.assert_allclose(value[:, :, 0, 0], reference[key], rtol=0, atol=1e-3)
            continue
        assert value.shape[-2:] == (448, 448)
        centre = value[:, :, CROP, CROP]
        np.testing.assert_allclose(centre, reference[key], rtol=0, atol=1e-3, err_msg=key)
        np.testing.assert_array_equal(centre.argmax(1), reference[key].argmax(1), err_msg=key)


def test_backbone_feature_sizes(parity_model_dir: Path) -> None:
    model = load_model(parity_model_dir, device="cpu")
    with torch.inference_mode():
        features = model.backbone(torch.zeros(2, 3, 448, 448))
    assert [tuple(f.shape[1:]) for f in features] == [(64, 448, 448), (64, 224, 224), (128, 112, 112),
                                                      (256, 56, 56), (512, 28, 28)]  # fmt: skip


def _executed(model: torch.nn.Module, images: np.ndarray) -> tuple[set[str], dict[str, np.ndarray]]:
    """Names of decoder/head modules whose forward ran, and the logits."""
    ran: set[str] = set()
    watched = {"conv_map", *(f"decoder_head.{d}" for d in model.decoder_head)}
    watched |= {f"output_head.{d}.{h}" for d, heads in model.output_head.items() for h in heads}
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(lambda *_, n=name: ran.add(n)) for name in watched]
    logits = _forward(model, images)
    for handle in handles:
        handle.remove()
    return ran, logits


def test_heads_run_only_their_decoders(parity_model_dir: Path, reference: dict[str, np.ndarray]) -> None:
    images = reference["images"][:1, :, :, :]
    ran_all, full = _executed(load_model(parity_model_dir, device="cpu"), images)
    ran, nuclei = _executed(load_model(parity_model_dir, device="cpu", heads=["Nuclei", "Nuclei#TYPE"]), images)

    assert len(ran_all) == 12  # conv_map, 6 decoders, 5 output heads
    assert ran == {"conv_map", "decoder_head.Nuclei", "decoder_head.Nuclei#TYPE",
                   "output_head.Nuclei.INST", "output_head.Nuclei#TYPE.TYPE"}  # fmt: skip
    assert list(nuclei) == ["Nuclei-INST", "Nuclei-TYPE"]
    for key in nuclei:
        np.testing.assert_allclose(nuclei[key], full[key], rtol=0, atol=1e-6)


def test_tissue_only_skips_pixel_decoders(parity_model_dir: Path, reference: dict[str, np.ndarray]) -> None:
    ran, logits = _executed(load_model(parity_model_dir, device="cpu", heads=["tissue"]), reference["images"][:1])
    assert ran == {"decoder_head.Patch-Class"}
    np.testing.assert_allclose(logits["Patch-Class"][:, :, 0, 0], reference["Patch-Class"][:1], rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    ("heads", "decoders"),
    [
        (["nuclei"], ("Nuclei", "Nuclei#TYPE")),
        (["gland", "lumen"], ("Gland", "Gland#TYPE", "Lumen")),
        (["Nuclei-TYPE", "Patch-Class"], ("Nuclei#TYPE", "Patch-Class")),
        (["tissue", "Lumen"], ("Lumen", "Patch-Class")),
    ],
)
def test_head_spellings(heads: list[str], decoders: tuple[str, ...]) -> None:
    assert CerberusNet(RELEASED).run_only(heads).running == decoders


def test_unknown_head_is_named() -> None:
    model = CerberusNet({"Nuclei": {"INST": 3}}, considered_tasks=["Nuclei"])
    with pytest.raises(ValueError, match="'stroma'"):
        model.run_only(["nuclei", "stroma"])


def test_fusion_folds_every_batchnorm_after_a_conv(parity_model_dir: Path, reference: dict[str, np.ndarray]) -> None:
    from cerberus_batch.model.fusion import fuse_batchnorms

    images = reference["images"][:1]
    plain = _forward(load_model(parity_model_dir, device="cpu", heads=["nuclei", "tissue"]), images)
    model = fuse_batchnorms(load_model(parity_model_dir, device="cpu", heads=["nuclei", "tissue"]))
    left = [name for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm2d)]
    assert left == ["decoder_head.Patch-Class.bn1"]  # it precedes every conv of its head
    for key, value in _forward(model, images).items():
        np.testing.assert_allclose(value, plain[key], rtol=0, atol=1e-4, err_msg=key)
