"""A model directory in the official format, with the parity README's deterministic weights."""

from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).parent / "data"


def _value(name: str, shape: list[int], batchnorms: set[str]) -> torch.Tensor:
    module, leaf = name.rsplit(".", 1)
    if leaf == "num_batches_tracked":
        return torch.tensor(0, dtype=torch.int64)
    u = np.random.default_rng(zlib.crc32(name.encode())).random(math.prod(shape)).reshape(shape)
    if leaf == "running_mean" or leaf == "bias":
        value = 0.1 * (2 * u - 1)
    elif leaf == "running_var":
        value = 0.5 + u
    elif module in batchnorms:
        value = 0.5 + 0.5 * u
    else:
        value = (2 * u - 1) * math.sqrt(3) * math.sqrt(2 / math.prod(shape[1:]))
    return torch.from_numpy(value.astype(np.float32))


def parity_state_dict(prefix: str = "") -> dict[str, torch.Tensor]:
    layout = json.loads((DATA / "state_dict_layout.json").read_text())
    batchnorms = {name.rsplit(".", 1)[0] for name, _ in layout if name.endswith(".running_mean")}
    return {prefix + name: _value(name, shape, batchnorms) for name, shape in layout}


def make_parity_model_dir(path: str | Path, prefix: str = "") -> Path:
    """Write weights.tar ({"desc": state_dict}, keys prefixed by `prefix`) and settings.yml into `path`."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"desc": parity_state_dict(prefix)}, directory / "weights.tar")
    shutil.copyfile(DATA / "settings.yml", directory / "settings.yml")
    return directory
