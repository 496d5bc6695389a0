"""Display colours of instance and tissue classes, shared by QC pictures, overlays and exports.

The colours themselves are the vocabulary's; a class a kind does not name (e.g. the stain
baseline's "nucleus") gets the kind's single colour.
"""

from __future__ import annotations

from typing import Sequence

from cerberus_batch.vocabulary import OBJECTS, RGB, TISSUE

# Class name → colour per instance kind; `nolabel` (index 0) is never an instance's class.
INSTANCE_COLOURS: dict[str, dict[str, RGB]] = {
    kind.name: dict(zip(kind.classes[1:], kind.colours[1:])) for kind in OBJECTS
}
KIND_COLOURS: dict[str, RGB] = {kind.name: kind.colour for kind in OBJECTS}
TISSUE_COLOURS: dict[str, RGB] = dict(zip(TISSUE.classes, TISSUE.colours))
# Tissue classes of other models, by class index; index 0 (background) stays light grey.
SPARE_TISSUE_COLOURS: tuple[RGB, ...] = (
    (240, 240, 240), (199, 21, 133), (46, 139, 87), (65, 105, 225), (210, 105, 30), (148, 0, 211), (112, 128, 144),
)


def instance_colour(kind: str, class_name: str) -> RGB:
    """Colour of an instance of `kind` ("nuclei", "glands", "lumens") with this class."""
    return INSTANCE_COLOURS.get(kind, {}).get(class_name, KIND_COLOURS.get(kind, (255, 255, 255)))


def tissue_colours(names: Sequence[str]) -> list[RGB]:
    """One colour per tissue class index."""
    return [tissue_colour(index, name) for index, name in enumerate(names)]


def tissue_colour(index: int, name: str) -> RGB:
    """Colour of the tissue class with this index and name."""
    return TISSUE_COLOURS.get(name, SPARE_TISSUE_COLOURS[index % len(SPARE_TISSUE_COLOURS)])
