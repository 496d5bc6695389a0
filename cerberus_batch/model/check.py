"""What `check-model` can say about a Cerberus model folder: it loads as a run loads it, its heads and
their classes, the identity a run records, a finite forward pass, and (given the parity fixture's
reference logits) whether it reproduces them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cerberus_batch.errors import CheckpointError, first_line
from cerberus_batch.grid import CELL, CONTEXT
from cerberus_batch.model.checkpoint import SETTINGS, WEIGHTS, model_files
from cerberus_batch.model.predictor import numerics
from cerberus_batch.vocabulary import head_outputs

# The parity README's tolerance: a faithful network matches the reference logits to ~1e-3 and every argmax.
PARITY_ATOL = 1e-3
PROBE_SIDE = CELL + 2 * CONTEXT  # the smallest tile a forward pass takes: one output cell with its context
PROBE_RGB = (200, 150, 190)  # an H&E-pink tile for the finite check when no reference crops are given
WHERE_TO_GET = (
    f"a folder holding the official {WEIGHTS} and {SETTINGS}, unchanged, from the authors' Cerberus release "
    "(Graham et al., Medical Image Analysis 2022; CC BY-NC-SA 4.0, non-commercial use), checked by "
    "`cerberus-batch check-model DIR`"
)


@dataclass(frozen=True)
class Parity:
    """The folder's logits against the reference's, over the heads both have."""

    crops: int
    worst: float  # max |Δ logit|
    worst_head: str
    argmax_equal: bool

    @property
    def reproduced(self) -> bool:
        return self.worst <= PARITY_ATOL and self.argmax_equal


@dataclass(frozen=True)
class ModelCheck:
    model_dir: Path
    heads: dict[str, tuple[str, ...]]  # output key -> what each output channel means
    identity: str
    numerics: str
    unverified: str | None  # load_model's warning for weights without checksums
    probe: str  # what the finite forward pass ran on
    parity: Parity | None

    def lines(self) -> list[str]:
        """The check, one screen: a label column, then what was found."""
        width = max(map(len, self.heads))
        rows = [("model", str(self.model_dir))]
        rows += [("heads" if i == 0 else "", f"{key:<{width}}  {len(names)}: {', '.join(names)}")
                 for i, (key, names) in enumerate(self.heads.items())]
        rows.append(("identity", f"{self.identity} (sha256 of {SETTINGS}, {WEIGHTS} and these heads; "
                                 "a run of fewer heads records another)"))
        checksums = self.unverified or "every zip member's CRC verified"
        rows.append(("weights", f"loaded strictly (weights_only, every key and shape); {checksums}"))
        rows.append(("forward", f"finite logits from every head on {self.probe} ({self.numerics})"))
        rows.append(("parity", self._parity()))
        return [f"{label:<9} {text}" for label, text in rows]

    def _parity(self) -> str:
        if self.parity is None:
            return ("not checked: pass --reference with the parity fixture's forward_reference.npz "
                    "(tests/data/ in a checkout); the official weights are not the parity weights, so they "
                    "cannot reproduce it")
        p = self.parity
        measured = f"max |Δ logit| {p.worst:.1e} ({p.worst_head}), argmaxes {'equal' if p.argmax_equal else 'differ'}"
        if p.reproduced:
            return (f"reproduces the reference logits on {p.crops} H&E crops ({measured}; tolerance {PARITY_ATOL:g}): "
                    "the parity README's deterministic weights in this package's network")
        return (f"does not reproduce the reference logits ({measured}): not the parity README's deterministic "
                "weights (the official weights never are), so only the checks above apply")


def check_model(model_dir: str | Path, reference: str | Path | None = None, device: str | None = None) -> ModelCheck:
    """Load `model_dir` as `run` and `tile` load it and check it; CheckpointError (one line) for a problem."""
    from cerberus_batch.model.cerberus import CerberusPredictor
    from cerberus_batch.model.options import InferenceOptions

    weights, _ = model_files(model_dir)
    reference = None if reference is None else Path(reference)
    crops, expected = _reference(reference) if reference is not None else (None, {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = CerberusPredictor(model_dir, options=InferenceOptions(device=device))
    ours = [w for w in caught if str(w.message).startswith(f"{weights}: ")]  # load_model's: shown as a row
    for w in caught:  # anything else is not ours to swallow
        if w not in ours:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if crops is None:
        probe = f"one {PROBE_SIDE}-px tile"
        images = np.broadcast_to(np.array(PROBE_RGB, np.uint8), (1, PROBE_SIDE, PROBE_SIDE, 3)).copy()
    else:
        probe = f"the {len(crops)} reference crops"
        images = crops
    logits = predictor.logits(images)
    for key, value in logits.items():
        if not np.isfinite(value).all():
            raise CheckpointError(f"{weights}: {key} gives non-finite logits on {probe}")
    return ModelCheck(
        model_dir=Path(model_dir),
        heads={key: head_outputs()[key] for key in predictor.heads},
        identity=predictor.identity,
        numerics=numerics(predictor.kind, predictor.device.type, None),
        unverified=str(ours[0].message).removeprefix(f"{weights}: ") if ours else None,
        probe=probe,
        parity=None if reference is None else _parity(reference, logits, expected, len(images)),
    )


def _reference(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The parity fixture's crops (uint8 N x 448 x 448 x 3) and logits per head."""
    try:
        with np.load(path) as npz:
            arrays = dict(npz)
    except Exception as err:  # a missing or foreign file surfaces as OSError, ValueError, BadZipFile, ...
        raise CheckpointError(f"{path}: not a reference logits file ({first_line(err, typed=True)})") from None
    crops = arrays.pop("images", None)
    if crops is None or crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (PROBE_SIDE, PROBE_SIDE, 3):
        raise CheckpointError(f"{path}: no 'images' array of uint8 {PROBE_SIDE}x{PROBE_SIDE} RGB crops")
    return crops, arrays


def _parity(path: Path, logits: dict[str, np.ndarray], expected: dict[str, np.ndarray], crops: int) -> Parity:
    """Pixel heads' logits (N, C, 144, 144) and Patch-Class's (N, C, 1, 1) against the reference's
    (N, C, 144, 144) and (N, C): the difference and the argmax over classes."""
    compared = [key for key in logits if key in expected]
    if not compared:
        raise CheckpointError(f"{path}: holds logits of none of the model's heads ({', '.join(logits)})")
    worst, worst_head, argmax_equal = -1.0, "", True
    for key in compared:
        if logits[key].size != expected[key].size:
            raise CheckpointError(f"{path}: {key} has shape {expected[key].shape}, the model gives {logits[key].shape}")
        got = logits[key].reshape(expected[key].shape)
        delta = float(np.abs(got - expected[key]).max())
        if delta > worst:
            worst, worst_head = delta, key
        argmax_equal &= bool((got.argmax(1) == expected[key].argmax(1)).all())
    return Parity(crops, worst, worst_head, argmax_equal)
