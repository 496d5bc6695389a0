"""What a map group records of its slide and model, in run and tile mode. Dask-free: tile mode reads it."""

from __future__ import annotations

from typing import Any

from cerberus_batch import __version__
from cerberus_batch.model.predictor import ModelDescription, Predictor
from cerberus_batch.slides import Transform
from cerberus_batch.slides.location import Location
from cerberus_batch.storage.atomic import SOFTWARE


def map_attributes(
    slide_id: str, path: Location, mpp: float, transform: Transform, model: Predictor | ModelDescription,
    **specific: Any,
) -> dict[str, Any]:
    """What a map group records of its slide and model (a predictor, or its description), in run and tile mode,
    plus each mode's own."""
    return {
        "slide_id": slide_id,
        "slide_path": str(path),
        "mpp": mpp,  # true µm per processing px (e.g. 0.499 for a natively read 0.499 level)
        "transform": transform.to_dict(),
        "model_kind": model.kind,
        "model_identity": model.identity,
        "heads": list(model.heads),
        "class_names": {k: list(v) for k, v in model.class_names.items()},
        **specific,
        "software": f"{SOFTWARE} {__version__}",  # also what marks the group as ours
    }
