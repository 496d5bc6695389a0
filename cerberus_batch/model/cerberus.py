"""CerberusPredictor: the Cerberus network over a region, in output tiles of whole 144-px cells."""

from __future__ import annotations

import contextlib
import hashlib
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from cerberus_batch.grid import CELL, CONTEXT, Tile, input_boxes, pass_size, tissue_tiles
from cerberus_batch.model.activation import probabilities
from cerberus_batch.model.checkpoint import SETTINGS, WEIGHTS, default_device, load_model, read_model_folder
from cerberus_batch.model.fusion import fuse_batchnorms
from cerberus_batch.model.memory import (
    CPU_BYTES_PER_INPUT_PX, cpu_budget, cuda_budget, cuda_bytes_per_input_px, fitting_tiles,
)
from cerberus_batch.model.naming import CLASS_NAMES, PATCH_CLASS
from cerberus_batch.model.options import InferenceOptions
from cerberus_batch.model.predictor import ModelDescription, output_size


def _by_shape(tiles: list[Tile]) -> Iterator[list[Tile]]:
    """Tiles grouped by shape, so equal shapes batch together."""
    for _, same_shape in groupby(sorted(tiles, key=lambda t: (t.h, t.w)), key=lambda t: (t.h, t.w)):
        yield list(same_shape)


def _identity(model_dir: Path, decoders: Iterable[str]) -> str:
    """sha256 of settings.yml, weights.tar and the decoders that run (mode and tile agree within 1e-3)."""
    digest = hashlib.sha256()
    for name in (SETTINGS, WEIGHTS):
        with open(model_dir / name, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    digest.update("\n".join(decoders).encode())
    return digest.hexdigest()


def _class_names(heads: Iterable[str]) -> dict[str, tuple[str, ...]]:
    return {key: CLASS_NAMES[key] for key in heads if key in CLASS_NAMES}


def describe_cerberus(model_dir: str | Path, heads: Iterable[str] | None = None) -> ModelDescription:
    """What `CerberusPredictor(model_dir, heads)` will say of itself, from settings.yml and the weights' bytes
    (refused as loading refuses the settings), without building the network."""
    folder = read_model_folder(model_dir, heads)
    keys = tuple(folder.output_classes)
    return ModelDescription("cerberus", keys, _class_names(keys), _identity(Path(model_dir), folder.running))


class CerberusPredictor:
    """The Predictor protocol for a Cerberus model directory, run as `options` say (`model.options`).

    Each pass is an output tile with 152 px context; patch mode's are 144 px. A batch holds at most
    `options.batch_size` tiles of one shape, and fewer where the device's memory would not hold them
    (`model.memory`; `options.memory` is a Dask worker's share of its limit). `amp` autocasts on CUDA;
    on CPU only "bf16" is allowed. CUDA convolutions run in plain fp32 unless `tf32` (faster, numbers
    differ by ~1e-3; cuDNN's switch is process-wide, so it is set here, once). `channels_last`
    defaults to on for CPU (oneDNN then skips layout reorders: ~1.5x faster) and off for CUDA.
    """

    kind = "cerberus"

    def __init__(
        self,
        model_dir: str | Path,
        heads: Iterable[str] | None = None,
        options: InferenceOptions = InferenceOptions(),
        channels_last: bool | None = None,
        tf32: bool = False,
    ) -> None:
        self.device = torch.device(options.device) if options.device is not None else default_device()
        if options.amp == "fp16" and self.device.type != "cuda":
            raise ValueError(f"amp must be None, 'bf16' or (on CUDA) 'fp16', got 'fp16' on {self.device.type}")
        self.model = fuse_batchnorms(load_model(model_dir, self.device, heads))
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.tile = pass_size(options.mode, options.tile)
        self.batch_size = options.batch_size
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(options.amp or "")
        if self.device.type == "cuda":
            torch.backends.cudnn.allow_tf32 = tf32
        self.memory = options.memory
        self.heads = tuple(self.model.output_classes)
        self.class_names = _class_names(self.heads)
        self.identity = _identity(Path(model_dir), self.model.running)
        self._cuda_bytes_per_px: float | None = None

    def predict(self, image: np.ndarray, tissue: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """`tissue`: bool (H // CELL, W // CELL), the cells to infer (all when None). Passes lie on a grid
        of `tile` px from the first output px, each shrunk to its tissue cells (`grid.tissue_tiles`);
        the outputs of cells no pass covers are 0."""
        height, width = output_size(image)
        cells = np.ones((height // CELL, width // CELL), bool) if tissue is None else np.asarray(tissue, bool)
        if cells.shape != (height // CELL, width // CELL):
            raise ValueError(f"tissue has shape {cells.shape}, the image has {height // CELL}x{width // CELL} cells")
        out = {}
        for key, classes in self.model.output_classes.items():
            if key == PATCH_CLASS:
                out[key] = np.zeros((classes, height // CELL, width // CELL), np.float32)
            else:  # INST heads keep [inner, contour]
                out[key] = np.zeros((2 if key.endswith("-INST") else classes, height, width), np.float32)
        batches = list(self._batches(tissue_tiles(cells, self.tile)))
        # One thread cuts (and on CUDA pins) the next batch while this one runs.
        with ThreadPoolExecutor(1) as prefetch:
            upcoming = prefetch.submit(self._inputs, image, batches[0]) if batches else None
            for batch, following in zip(batches, batches[1:] + [None]):
                inputs = upcoming.result()
                if following is not None:
                    upcoming = prefetch.submit(self._inputs, image, following)
                self._predict_batch(inputs, batch, out)
        return out

    def input_needed(self, tissue: np.ndarray) -> list[Tile]:
        """Each pass's input: its output tile and the context around it."""
        return input_boxes(tissue_tiles(tissue, self.tile), CONTEXT)

    def _batches(self, tiles: list[Tile]) -> Iterator[list[Tile]]:
        for group in _by_shape(tiles):
            size = self.tiles_per_batch(group[0].h, group[0].w)
            for start in range(0, len(group), size):
                yield group[start : start + size]

    def tiles_per_batch(self, height: int, width: int) -> int:
        """Tiles of (height, width) output px one batch takes: at most batch_size, and what fits in the
        device's memory (`model.memory`)."""
        if self.device.type == "cuda":
            budget, per_px = cuda_budget(self.device), self._cuda_bytes()
        else:
            budget, per_px = cpu_budget(self.memory), CPU_BYTES_PER_INPUT_PX
        return fitting_tiles(budget, per_px, (height + 2 * CONTEXT) * (width + 2 * CONTEXT), self.batch_size)

    def _cuda_bytes(self) -> float:
        """Device bytes per input px, measured once on one full tile (smaller tiles need proportionally less)."""
        if self._cuda_bytes_per_px is None:
            side = self.tile + 2 * CONTEXT
            blank = torch.zeros((1, side, side, 3), dtype=torch.uint8)

            def run_one() -> None:
                for _ in self._forward(blank):
                    pass

            self._cuda_bytes_per_px = cuda_bytes_per_input_px(self.device, run_one, side * side)
        return self._cuda_bytes_per_px

    def _inputs(self, image: np.ndarray, batch: list[Tile]) -> torch.Tensor:
        """The batch's crops (tile plus context: `input_needed`'s boxes) as one uint8 NHWC tensor, pinned for a CUDA copy."""
        crops = torch.from_numpy(np.stack([image[y : y + h, x : x + w] for y, x, h, w in input_boxes(batch, CONTEXT)]))
        return crops.pin_memory() if self.device.type == "cuda" else crops

    def _predict_batch(self, inputs: torch.Tensor, batch: list[Tile], out: dict[str, np.ndarray]) -> None:
        for key, result in self._forward(inputs):
            for (y, x, h, w), values in zip(batch, result):
                if key == PATCH_CLASS:
                    out[key][:, y // CELL : (y + h) // CELL, x // CELL : (x + w) // CELL] = values
                else:
                    out[key][:, y : y + h, x : x + w] = values

    def logits(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Raw float32 logits of uint8 (N, H, W, 3) tiles with context, computed as `predict` computes
        them (device, amp, TF32, memory format): the output part of pixel heads, Patch-Class per cell."""
        return {key: value.float().cpu().numpy() for key, value in self._logits(torch.from_numpy(images))}

    def _forward(self, inputs: torch.Tensor) -> Iterator[tuple[str, np.ndarray]]:
        """(output key, probabilities) of one batch, a head at a time, so no head's logits outlive it.

        On CUDA they cross to the host as float16, half the bytes of float32 (stored maps are uint8 or
        float16); the CPU path keeps float32, so its maps stay bit for bit what they were."""
        for key, logits in self._logits(inputs):
            prob = probabilities(key, logits)
            yield key, (prob.half() if prob.is_cuda else prob).cpu().numpy()

    def _logits(self, inputs: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        images = inputs.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        images = images.contiguous(memory_format=self.memory_format)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            yield from self.model.tile_logits(images)
