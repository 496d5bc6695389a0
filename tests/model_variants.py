"""Real checkpoints that differ from the parity model in one way: a head's size, a new head, one tissue class's
last layer, flipped bytes."""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import torch
import yaml
from parity_model import DATA, parity_state_dict

from cerberus_batch.vocabulary import TISSUE, TUMOUR

FLIPPED = 4096  # bytes inverted by `flip_tensor_bytes`
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip local file header, before its name and extra field


def model_dir_with_heads(path: Path, decoder: str, classes: int) -> Path:
    """The parity model with `decoder`'s heads giving `classes` outputs, settings and weights agreeing.

    A decoder the parity model lacks is added as a copy of the Lumen decoder.
    """
    path.mkdir(parents=True, exist_ok=True)
    settings = yaml.safe_load((DATA / "settings.yml").read_text())
    model_kwargs = settings["model_kwargs"]
    state = parity_state_dict()
    if decoder not in model_kwargs["decoder_kwargs"]:
        model_kwargs["decoder_kwargs"][decoder] = dict(model_kwargs["decoder_kwargs"]["Lumen"])
        model_kwargs["considered_tasks"].append(decoder)
        for key in [k for k in state if ".Lumen." in k]:
            state[key.replace(".Lumen.", f".{decoder}.")] = state[key].clone()
    heads = model_kwargs["decoder_kwargs"][decoder]
    for head in heads:
        heads[head] = classes
    # The last layer of each of the decoder's heads: a 1x1 conv with one output channel per class.
    for key in [k for k in state if k.startswith((f"decoder_head.{decoder}.conv2.", f"output_head.{decoder}."))]:
        if ".x.0." in key:  # a pixel head's hidden block, not its last layer
            continue
        state[key] = torch.cat([state[key]] * (classes // len(state[key]) + 1))[:classes]
    torch.save({"desc": state}, path / "weights.tar")
    (path / "settings.yml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def model_dir_with_tumour(path: Path, shift: float) -> Path:
    """The parity model whose tissue head calls a cell abnormal epithelium where muscle's logit comes within
    `shift` of stroma's: abnormal epithelium's last-layer channel becomes muscle's, raised by `shift`.
    (The parity weights call every tissue cell stroma, muscle second, by a margin that varies with the stain.)"""
    path.mkdir(parents=True, exist_ok=True)
    state = parity_state_dict()
    tumour, muscle = TISSUE.classes.index(TUMOUR), TISSUE.classes.index("muscle")
    for key in ("decoder_head.Patch-Class.conv2.weight", "decoder_head.Patch-Class.conv2.bias"):
        state[key][tumour] = state[key][muscle]
    state["decoder_head.Patch-Class.conv2.bias"][tumour] += shift
    torch.save({"desc": state}, path / "weights.tar")
    shutil.copyfile(DATA / "settings.yml", path / "settings.yml")
    return path


def copy_model_dir(source: Path, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in ("weights.tar", "settings.yml"):
        shutil.copyfile(source / name, path / name)
    return path


def flip_tensor_bytes(weights: Path) -> str:
    """Invert FLIPPED bytes in the middle of the largest tensor's data; returns that zip member's name.

    The offset is read from the member's own local header, so the flip lands in tensor bytes, not in
    any header, name, padding or the central directory.
    """
    with zipfile.ZipFile(weights) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert member.compress_type == zipfile.ZIP_STORED and member.file_size > 3 * FLIPPED
    with open(weights, "r+b") as file:
        file.seek(member.header_offset)
        header = _LOCAL_HEADER.unpack(file.read(_LOCAL_HEADER.size))
        assert header[0] == b"PK\x03\x04"
        name_length, extra_length = header[-2:]
        start = member.header_offset + _LOCAL_HEADER.size + name_length + extra_length + member.file_size // 2
        file.seek(start)
        data = file.read(FLIPPED)
        file.seek(start)
        file.write(bytes(b ^ 0xFF for b in data))
    return member.filename
