"""`cerberus-batch check-model DIR`: a model folder loaded as a run loads it, shown in one screen; a folder
we refuse is one line and exit 1; parity is claimed only where the reference logits are reproduced."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from model_variants import copy_model_dir, flip_tensor_bytes, model_dir_with_heads, model_dir_with_tumour
from parity_model import DATA, parity_state_dict
from torch.utils.serialization import config as torch_serialization

from cerberus_batch.cli import main

REFERENCE = DATA / "forward_reference.npz"
DECODERS = list(yaml.safe_load((DATA / "settings.yml").read_text())["model_kwargs"]["decoder_kwargs"])
# What each released head's outputs mean (spec §10 and the INST channels), written out here independently.
HEADS = {
    "Gland-INST": "3: background, inner, contour",
    "Gland-TYPE": "3: nolabel, gland, surface-epi",
    "Lumen-INST": "3: background, inner, contour",
    "Nuclei-INST": "3: background, inner, contour",
    "Nuclei-TYPE": "7: nolabel, neutrophil, epithelial, lymphocyte, plasma, eosinophil, connective",
    "Patch-Class": "9: background, abnormal_epi, normal_epi, inflammatory, muscle, stroma, debris, mucous, adipose",
}


def _check(*args: str) -> tuple[int, dict[str, list[str]]]:
    """Exit code and the printed rows by label (a row without a label continues the one above)."""
    result = CliRunner().invoke(main, ["check-model", *args])
    rows: dict[str, list[str]] = {}
    label = ""
    for line in result.output.splitlines():
        label = line[:9].strip() or label
        rows.setdefault(label, []).append(line[10:])
    return result.exit_code, rows


def _refusal(*args: str) -> str:
    result = CliRunner().invoke(main, ["check-model", *args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def _sha256(model_dir: Path) -> str:
    digest = hashlib.sha256((model_dir / "settings.yml").read_bytes() + (model_dir / "weights.tar").read_bytes())
    digest.update("\n".join(DECODERS).encode())
    return digest.hexdigest()


def test_parity_folder(parity_model_dir: Path) -> None:
    code, rows = _check(str(parity_model_dir), "--reference", str(REFERENCE))
    assert code == 0, rows
    assert rows["model"] == [str(parity_model_dir)]
    assert [re.split(r"\s+", row, maxsplit=1) for row in rows["heads"]] == [list(item) for item in HEADS.items()]
    assert rows["identity"][0].split()[0] == _sha256(parity_model_dir)
    assert "CRC verified" in rows["weights"][0]
    assert rows["forward"][0].startswith("finite logits from every head on the 2 reference crops")
    (parity,) = rows["parity"]
    assert parity.startswith("reproduces the reference logits on 2 H&E crops") and "argmaxes equal" in parity
    assert float(re.search(r"max \|Δ logit\| (\S+)", parity)[1]) <= 1e-3


def test_other_weights_are_not_called_parity(tmp_path: Path) -> None:
    """A loadable folder whose tissue head differs: checked, but the reference logits are not reproduced, and
    the worst head is the one changed."""
    model_dir = model_dir_with_tumour(tmp_path / "model", shift=5.0)
    code, rows = _check(str(model_dir), "--reference", str(REFERENCE))
    assert code == 0, rows
    (parity,) = rows["parity"]
    assert parity.startswith("does not reproduce the reference logits") and "(Patch-Class)" in parity, parity
    assert "not the parity README's deterministic weights" in parity


def test_without_checksums_or_reference(tmp_path: Path) -> None:
    """What can be checked without the reference: strict load, a finite pass; weights saved without CRCs say so."""
    (tmp_path / "model").mkdir()
    with torch_serialization.patch({"save.compute_crc32": False}):
        torch.save({"desc": parity_state_dict()}, tmp_path / "model" / "weights.tar")
    (tmp_path / "model" / "settings.yml").write_bytes((DATA / "settings.yml").read_bytes())
    code, rows = _check(str(tmp_path / "model"))
    assert code == 0, rows
    assert "saved without CRCs" in rows["weights"][0] and "CRC verified" not in rows["weights"][0]
    assert rows["forward"][0].startswith("finite logits from every head on one 448-px tile")
    assert rows["parity"][0].startswith("not checked: pass --reference")


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, parity_model_dir: Path) -> dict[str, tuple[Path, str]]:
    """Broken folders, each with the line that must refuse it."""
    root = tmp_path_factory.mktemp("broken")
    flipped = copy_model_dir(parity_model_dir, root / "flipped")
    member = flip_tensor_bytes(flipped / "weights.tar")
    four = model_dir_with_heads(root / "four", "Patch-Class", 4)
    no_settings = copy_model_dir(parity_model_dir, root / "no_settings")
    (no_settings / "settings.yml").unlink()
    nan = root / "nan"
    nan.mkdir()
    state = parity_state_dict()
    state["output_head.Nuclei#TYPE.TYPE.x.1.conv.weight"][0] = float("nan")  # one class's last layer
    torch.save({"desc": state}, nan / "weights.tar")
    (nan / "settings.yml").write_bytes((DATA / "settings.yml").read_bytes())
    return {
        "flipped bytes": (flipped, f"Error: {flipped / 'weights.tar'}: corrupted: {member} fails its CRC check"),
        "4-class Patch-Class": (four, f"Error: {four / 'settings.yml'}: Patch-Class has 4 outputs; this package reads 9"),
        "no settings.yml": (no_settings, f"Error: {no_settings / 'settings.yml'}: missing"),
        "NaN weights": (nan, f"Error: {nan / 'weights.tar'}: Nuclei-TYPE gives non-finite logits"),
    }


@pytest.mark.parametrize("case", ["flipped bytes", "4-class Patch-Class", "no settings.yml", "NaN weights"])
def test_broken_folder_is_one_line(broken: dict, case: str) -> None:
    model_dir, expected = broken[case]
    assert _refusal(str(model_dir)).startswith(expected)


def test_unreadable_reference_is_one_line(parity_model_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "reference.npz"
    text.write_text("not arrays\n")
    assert _refusal(str(parity_model_dir), "--reference", str(text)).startswith(f"Error: {text}: not a reference logits file")
