"""Display colours of instance and tissue classes, shared by QC pictures, overlays and exports.

Instance colours are the reference's overlay colours (spec §10); a class the
reference does not name (e.g. the stain baseline's "nucleus") gets its kind's
single instance colour. Tissue types have no reference colours, so these are our own.
"""

from __future__ import annotations

from typing import Sequence

RGB = tuple[int, int, int]

INSTANCE_COLOURS: dict[str, dict[str, RGB]] = {
    "nuclei": {
        "neutrophil": (0, 0, 255), "epithelial": (0, 255, 0), "lymphocyte": (255, 0, 255),
        "plasma": (176, 244, 230), "eosinophil": (0, 191, 255), "connective": (255, 165, 0),
    },
    "glands": {"gland": (255, 255, 0), "surface-epi": (177, 52, 235)},
    "lumens": {"lumen": (131, 235, 52)},
}
KIND_COLOURS: dict[str, RGB] = {"nuclei": (0, 255, 0), "glands": (255, 255, 0), "lumens": (255, 0, 255)}
TISSUE_COLOURS: dict[str, RGB] = {
    "background": (240, 240, 240), "abnormal_epi": (220, 20, 60), "normal_epi": (255, 105, 180),
    "inflammatory": (30, 144, 255), "muscle": (139, 69, 19), "stroma": (255, 160, 122), "debris": (128, 128, 128),
    "mucous": (0, 206, 209), "adipose": (255, 215, 0),
}
# Tissue classes of other models, by class index; index 0 (background) stays light grey.
SPARE_TISSUE_COLOURS: tuple[RGB, ...] = (
    (240, 240, 240), (199, 21, 133), (46, 139, 87), (65, 105, 225), (210, 105, 30), (148, 0, 211), (112, 128, 144),
)


def instance_colour(kind: str, class_name: str) -> RGB:
    """Colour of an instance of `kind` ("nuclei", "glands", "lumens") with this class."""
    return INSTANCE_COLOURS.get(kind, {}).get(class_name, KIND_COLOURS.get(kind, (255, 255, 255)))


def tissue_colours(names: Sequence[str]) -> list[RGB]:
    """One colour per tissue class index."""
    spare = SPARE_TISSUE_COLOURS
    return [TISSUE_COLOURS.get(name, spare[index % len(spare)]) for index, name in enumerate(names)]
