"""CerberusPredictor: the Cerberus network over a region, in output tiles of whole 144-px cells."""

from __future__ import annotations

import contextlib
import hashlib
from itertools import groupby
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np
import torch

from cerberus_batch.grid import CELL, CONTEXT, Tile
from cerberus_batch.model.activation import probabilities
from cerberus_batch.model.checkpoint import SETTINGS, WEIGHTS, default_device, load_model
from cerberus_batch.model.fusion import fuse_batchnorms
from cerberus_batch.model.naming import CLASS_NAMES, PATCH_CLASS
from cerberus_batch.model.predictor import output_size


def _tiles(height: int, width: int, size: int) -> list[Tile]:
    """Output tiles of at most `size` px, grouped by shape so equal shapes batch together."""
    tiles = [
        Tile(y, x, min(size, height - y), min(size, width - x))
        for y in range(0, height, size)
        for x in range(0, width, size)
    ]
    return sorted(tiles, key=lambda t: (t.h, t.w))


def _batches(tiles: list[Tile], batch_size: int) -> Iterator[list[Tile]]:
    for _, same_shape in groupby(tiles, key=lambda t: (t.h, t.w)):
        group = list(same_shape)
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def _identity(model_dir: Path, decoders: Iterable[str]) -> str:
    """sha256 of settings.yml, weights.tar and the decoders that run (mode and tile agree within 1e-3)."""
    digest = hashlib.sha256()
    for name in (SETTINGS, WEIGHTS):
        with open(model_dir / name, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    digest.update("\n".join(decoders).encode())
    return digest.hexdigest()


class CerberusPredictor:
    """The Predictor protocol for a Cerberus model directory.

    `mode="tile"` predicts output tiles of up to `tile` px (a multiple of 144) in one pass each, with
    152 px context; `mode="patch"` is the reference's 448-px patches at stride 144, i.e. tile 144.
    `amp` ("bf16"/"fp16") autocasts on CUDA; on CPU only "bf16" is allowed. `channels_last` defaults
    to on for CPU (oneDNN then skips layout reorders: ~1.5x faster) and off for CUDA.
    """

    kind = "cerberus"

    def __init__(
        self,
        model_dir: str | Path,
        heads: Iterable[str] | None = None,
        mode: Literal["tile", "patch"] = "tile",
        tile: int = 1008,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        amp: Literal["bf16", "fp16"] | None = None,
        channels_last: bool | None = None,
    ) -> None:
        if mode not in ("tile", "patch"):
            raise ValueError(f"mode must be 'tile' or 'patch', got {mode!r}")
        if tile <= 0 or tile % CELL:
            raise ValueError(f"tile must be a positive multiple of {CELL}, got {tile}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else default_device()
        if amp not in (None, "bf16", "fp16") or (amp == "fp16" and self.device.type != "cuda"):
            raise ValueError(f"amp must be None, 'bf16' or (on CUDA) 'fp16', got {amp!r} on {self.device.type}")
        self.model = fuse_batchnorms(load_model(model_dir, self.device, heads))
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.tile = CELL if mode == "patch" else tile
        self.batch_size = batch_size
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
        self.heads = tuple(self.model.output_classes)
        self.class_names = {key: CLASS_NAMES[key] for key in self.heads if key in CLASS_NAMES}
        self.identity = _identity(Path(model_dir), self.model.running)

    def predict(self, image: np.ndarray) -> dict[str, np.ndarray]:
        height, width = output_size(image)
        out = {}
        for key, classes in self.model.output_classes.items():
            if key == PATCH_CLASS:
                out[key] = np.empty((classes, height // CELL, width // CELL), np.float32)
            else:  # INST heads keep [inner, contour]
                out[key] = np.empty((2 if key.endswith("-INST") else classes, height, width), np.float32)
        for batch in _batches(_tiles(height, width, self.tile), self.batch_size):
            self._predict_batch(image, batch, out)
        return out

    def _predict_batch(self, image: np.ndarray, batch: list[Tile], out: dict[str, np.ndarray]) -> None:
        _, _, height, width = batch[0]
        crops = np.stack([image[y : y + height + 2 * CONTEXT, x : x + width + 2 * CONTEXT] for y, x, _, _ in batch])
        tensor = torch.from_numpy(crops)
        if self.device.type == "cuda":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        images = tensor.permute(0, 3, 1, 2).float().contiguous(memory_format=self.memory_format)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()
        )
        with torch.inference_mode():
            with autocast:
                logits = self.model(images, per_cell=True)
            for key, value in logits.items():
                if key != PATCH_CLASS:
                    value = value[..., CONTEXT : CONTEXT + height, CONTEXT : CONTEXT + width]
                result = probabilities(key, value).cpu().numpy()
                for (y, x, _, _), tile in zip(batch, result):
                    if key == PATCH_CLASS:
                        out[key][:, y // CELL : (y + height) // CELL, x // CELL : (x + width) // CELL] = tile
                    else:
                        out[key][:, y : y + height, x : x + width] = tile
