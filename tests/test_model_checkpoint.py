"""Every way a model directory can fail to load gives one line naming the file."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from model_variants import copy_model_dir, flip_tensor_bytes, model_dir_with_heads
from parity_model import DATA, parity_state_dict
from torch.utils.serialization import config as torch_serialization

from cerberus_batch.model import CheckpointError, load_model
from cerberus_batch.vocabulary import INST_CHANNELS, NUCLEI, TISSUE


class Payload:
    """An arbitrary pickled object: weights_only loading must refuse it."""


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return parity_state_dict()


def _model_dir(path: Path, checkpoint: object) -> Path:
    torch.save(checkpoint, path / "weights.tar")
    shutil.copyfile(DATA / "settings.yml", path / "settings.yml")
    return path


def _error(model_dir: Path) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_model(model_dir, device="cpu")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_directory(tmp_path: Path) -> None:
    assert _error(tmp_path / "nowhere") == f"{tmp_path / 'nowhere'}: model directory not found"


@pytest.mark.parametrize("absent", ["weights.tar", "settings.yml"])
def test_missing_file(tmp_path: Path, state: dict, absent: str) -> None:
    (_model_dir(tmp_path, {"desc": state}) / absent).unlink()
    assert _error(tmp_path).startswith(f"{tmp_path / absent}: missing")


def test_text_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    _model_dir(tmp_path, {})
    (tmp_path / "weights.tar").write_text("these are not weights\n")
    assert _error(tmp_path) == f"{tmp_path / 'weights.tar'}: not a torch checkpoint"


def test_no_desc(tmp_path: Path, state: dict) -> None:
    _model_dir(tmp_path, {"state_dict": state})
    assert _error(tmp_path) == f"{tmp_path / 'weights.tar'}: no 'desc' state dict"


@pytest.mark.parametrize(
    ("payload", "name"),
    # torch words these two refusals differently ("Unsupported global", "unsupported GLOBAL ... is blocked").
    [(Payload(), f"{__name__}.Payload"), (os.system, f"{os.system.__module__}.system")],
)
def test_pickled_object_refused(tmp_path: Path, state: dict, payload: object, name: str) -> None:
    _model_dir(tmp_path, {"desc": state, "extra_info": payload})
    assert _error(tmp_path) == (
        f"{tmp_path / 'weights.tar'}: holds pickled Python objects ({name}), refused by weights_only loading"
    )


def test_flipped_tensor_bytes_refused(tmp_path: Path, parity_model_dir: Path, state: dict) -> None:
    """torch's zip reader skips CRCs, so 4 KiB flipped in a tensor load as a wrong tensor unless we check them."""
    weights = copy_model_dir(parity_model_dir, tmp_path) / "weights.tar"
    member = flip_tensor_bytes(weights)
    loaded = torch.load(weights, map_location="cpu", weights_only=True)["desc"]
    assert sum(not torch.equal(loaded[k], state[k]) for k in state) == 1  # the flip landed in one tensor's data
    assert _error(tmp_path) == f"{weights}: corrupted: {member} fails its CRC check; download the weights again"


def test_damaged_zip_refused(tmp_path: Path, parity_model_dir: Path) -> None:
    weights = copy_model_dir(parity_model_dir, tmp_path) / "weights.tar"
    weights.write_bytes(weights.read_bytes()[:-1000])  # cut into the central directory
    assert _error(tmp_path).startswith(f"{weights}: corrupted: unreadable zip archive (")


def test_legacy_checkpoint_loads_with_a_warning(tmp_path: Path, state: dict) -> None:
    """A pre-1.6 (non-zip) checkpoint records no checksums: it loads, and the user is told it was not verified."""
    torch.save({"desc": state}, tmp_path / "weights.tar", _use_new_zipfile_serialization=False)
    shutil.copyfile(DATA / "settings.yml", tmp_path / "settings.yml")
    assert not zipfile.is_zipfile(tmp_path / "weights.tar")
    with pytest.warns(UserWarning, match=f"^{tmp_path / 'weights.tar'}: .*no checksums"):
        assert load_model(tmp_path, device="cpu").running[-1] == "Patch-Class"


def test_zip_saved_without_checksums_loads_with_a_warning(tmp_path: Path, state: dict) -> None:
    with torch_serialization.patch({"save.compute_crc32": False}):  # torch then records every CRC as 0
        _model_dir(tmp_path, {"desc": state})
    with pytest.warns(UserWarning, match=f"^{tmp_path / 'weights.tar'}: .*no checksums"):
        assert load_model(tmp_path, device="cpu").running[-1] == "Patch-Class"


@pytest.mark.parametrize(
    ("decoder", "key", "classes", "expected"),
    [
        ("Patch-Class", "Patch-Class", 4, TISSUE.classes),
        ("Nuclei#TYPE", "Nuclei-TYPE", 5, NUCLEI.classes),
        ("Nuclei", "Nuclei-INST", 2, INST_CHANNELS),
    ],
)
def test_head_sizes_checked_against_the_vocabulary(
    tmp_path: Path, decoder: str, key: str, classes: int, expected: tuple[str, ...]
) -> None:
    """Class indices mean the vocabulary's names (colours, tables, summaries): another count is another model."""
    model_dir_with_heads(tmp_path, decoder, classes)
    assert _error(tmp_path) == (
        f"{tmp_path / 'settings.yml'}: {key} has {classes} outputs; this package reads {len(expected)} "
        f"({', '.join(expected)})"
    )


def test_head_size_of_a_head_not_run_is_not_checked(tmp_path: Path) -> None:
    model_dir_with_heads(tmp_path, "Patch-Class", 4)
    assert load_model(tmp_path, device="cpu", heads=["nuclei"]).running == ("Nuclei", "Nuclei#TYPE")


def test_unknown_head_refused(tmp_path: Path) -> None:
    model_dir_with_heads(tmp_path, "Mucin", 3)
    message = _error(tmp_path)
    assert message.startswith(f"{tmp_path / 'settings.yml'}: Mucin-INST is not a head this package reads (")


def test_missing_keys_listed(tmp_path: Path, state: dict) -> None:
    dropped = ["conv_map.weight", "backbone.fc.bias", "backbone.fc.weight", "backbone.conv1.weight"]
    _model_dir(tmp_path, {"desc": {k: v for k, v in state.items() if k not in dropped}})
    message = _error(tmp_path)
    assert message.startswith(f"{tmp_path / 'weights.tar'}: 4 missing keys: backbone.conv1.weight, ")
    assert message.endswith("(+1 more)")


def test_unexpected_key_listed(tmp_path: Path, state: dict) -> None:
    _model_dir(tmp_path, {"desc": {**state, "decoder_head.Mucin.0.weight": torch.zeros(1)}})
    assert _error(tmp_path) == f"{tmp_path / 'weights.tar'}: 1 unexpected keys: decoder_head.Mucin.0.weight"


def test_partial_module_prefix_is_kept(tmp_path: Path, state: dict) -> None:
    """Only a prefix on every key is DataParallel's; a partial one is left and fails strictly."""
    first = next(iter(state))
    _model_dir(tmp_path, {"desc": {("module." + k if k == first else k): v for k, v in state.items()}})
    assert f"1 missing keys: {first}" in _error(tmp_path)


def test_shape_mismatch_named(tmp_path: Path, state: dict) -> None:
    _model_dir(tmp_path, {"desc": {**state, "conv_map.weight": torch.zeros(128, 512, 1, 1)}})
    assert _error(tmp_path) == (
        f"{tmp_path / 'weights.tar'}: conv_map.weight has shape (128, 512, 1, 1), the model expects (256, 512, 1, 1)"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("model_kwargs: [unclosed\n", "not valid YAML"),
        ("dataset_kwargs: {}\n", "no model_kwargs.decoder_kwargs mapping"),
        ("model_kwargs:\n  encoder_backbone_name: resnet50\n  decoder_kwargs: {Nuclei: {INST: 3}}\n", "resnet50"),
        ("model_kwargs:\n  decoder_kwargs: {Nuclei: {INST: 3}}\n  considered_tasks: [Nuclei, Gland]\n", "Gland"),
    ],
)
def test_bad_settings(tmp_path: Path, text: str, reason: str) -> None:
    _model_dir(tmp_path, {"desc": {}})
    (tmp_path / "settings.yml").write_text(text)
    message = _error(tmp_path)
    assert message.startswith(f"{tmp_path / 'settings.yml'}: ") and reason in message


def test_python_tagged_settings_load(tmp_path: Path, state: dict) -> None:
    """A training paramset dump may carry Python tuples in fields inference ignores."""
    _model_dir(tmp_path, {"desc": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}})
    with open(tmp_path / "settings.yml", "a") as settings:
        settings.write("optimizer_kwargs:\n  betas: !!python/tuple [0.9, 0.999]\n")
    assert load_model(tmp_path, device="cpu").running[-1] == "Patch-Class"
