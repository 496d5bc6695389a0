"""The model's vocabulary, written once: its heads, the maps each is stored as, the kinds of
object they make and the names of their classes.

Inference, map storage, post-processing, the overview, the QuPath export and the cohort
summary all read it, so a new head is added here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

from cerberus_batch.grid import CELL
from cerberus_batch.quantisation import CLASS_DTYPE

PER_CLASS = "per class"  # channels: one per class the model names for the head
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class StoredMap:
    """One map a head is stored as (a slide group's, `storage.maps.map_specs`, has its channels counted)."""

    name: str
    channels: int | Literal["per class"] | None  # None: a single 2-D map of class indices
    form: Literal["prob", "class"]  # quantised probabilities, or the most likely class
    downsample: int  # processing px per map px

    @property
    def probability(self) -> bool:
        return self.form == "prob"

    def bytes_per_px(self, dtype: str) -> float:
        """Stored bytes per processing px (before compression), probabilities as `dtype`; channels counted."""
        itemsize = np.dtype(dtype if self.probability else CLASS_DTYPE).itemsize
        return (self.channels or 1) * itemsize / self.downsample**2


INST_CHANNELS = ("background", "inner", "contour")  # an INST head's outputs; its map keeps inner and contour

# Model head → its maps, in the order a slide's maps are laid out. Glands and lumens are kept at half
# resolution, as the reference's WSI mode post-processes them there; tissue type is one value per cell.
HEAD_MAPS: dict[str, tuple[StoredMap, ...]] = {
    "Nuclei-INST": (StoredMap("nuclei_prob", 2, "prob", 1),),
    "Nuclei-TYPE": (StoredMap("nuclei_class", None, "class", 1),),
    "Gland-INST": (StoredMap("gland_prob", 2, "prob", 2),),
    "Gland-TYPE": (StoredMap("gland_class", None, "class", 2),),
    "Lumen-INST": (StoredMap("lumen_prob", 2, "prob", 2),),
    "Patch-Class": (StoredMap("tissue_class", None, "class", CELL), StoredMap("tissue_prob", PER_CLASS, "prob", CELL)),
}


@dataclass(frozen=True)
class Kind:
    """A kind of object the model finds: its table, the heads that make it and its classes."""

    name: str  # table name
    one: str  # one object, as exports call it
    outline_head: str  # the head whose probability map outlines the objects
    class_head: str | None  # the head whose class map classifies them; None: every object is class 1
    classes: tuple[str, ...]  # class index → name, as the reference's dataset names them (spec §10)
    colours: tuple[RGB, ...]  # display colour per class index (index 0 too, though instances never have it)
    colour: RGB  # the kind's colour, for a class it does not name (e.g. the stain baseline's "nucleus")

    @property
    def names_head(self) -> str:
        """The head a model names this kind's classes under."""
        return self.class_head or self.outline_head

    @property
    def prob_map(self) -> StoredMap:
        return _map(self.outline_head, "prob")

    @property
    def class_map(self) -> StoredMap | None:
        return _map(self.class_head, "class") if self.class_head else None


# Instance colours are the reference's overlay colours (spec §10); tissue types have none there, so
# theirs are our own. A `nolabel` class is never drawn; its colour is the kind's.
NUCLEI = Kind(
    "nuclei", "nucleus", "Nuclei-INST", "Nuclei-TYPE",
    ("nolabel", "neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective"),
    ((0, 255, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (176, 244, 230), (0, 191, 255), (255, 165, 0)),
    (0, 255, 0),
)
GLANDS = Kind("glands", "gland", "Gland-INST", "Gland-TYPE", ("nolabel", "gland", "surface-epi"),
              ((255, 255, 0), (255, 255, 0), (177, 52, 235)), (255, 255, 0))
LUMENS = Kind("lumens", "lumen", "Lumen-INST", None, ("nolabel", "lumen"), ((255, 0, 255), (131, 235, 52)), (255, 0, 255))
TISSUE = Kind(
    "tissue", "tissue region", "Patch-Class", "Patch-Class",
    ("background", "abnormal_epi", "normal_epi", "inflammatory", "muscle", "stroma", "debris", "mucous", "adipose"),
    ((240, 240, 240), (220, 20, 60), (255, 105, 180), (30, 144, 255), (139, 69, 19), (255, 160, 122), (128, 128, 128),
     (0, 206, 209), (255, 215, 0)),
    (240, 240, 240),
)
# The classes the named readouts (`tasks.composition.readouts`) cross, taken from the lists above.
LYMPHOCYTE, PLASMA = NUCLEI.classes[3], NUCLEI.classes[4]
TUMOUR, STROMA = TISSUE.classes[1], TISSUE.classes[5]  # abnormal epithelium; stroma
OBJECTS = (NUCLEI, GLANDS, LUMENS)  # the instance kinds, in table order; lumens after the glands holding them
KINDS = (*OBJECTS, TISSUE)
# Outlines of the big objects first, so smaller ones stay visible on top, as the reference draws them.
DRAWING_ORDER = (GLANDS, LUMENS, NUCLEI)


def model_class_names() -> dict[str, tuple[str, ...]]:
    """What the class index of each classifying head means, for a Cerberus model."""
    return {kind.class_head: kind.classes for kind in KINDS if kind.class_head}


def head_outputs() -> dict[str, tuple[str, ...]]:
    """What each output channel of each head of a Cerberus model means: its classes, or the INST channels."""
    classes = model_class_names()
    return {head: classes.get(head, INST_CHANNELS) for head in HEAD_MAPS}


def class_names(kind: Kind, model_names: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The names the model that made the maps gives this kind's classes, else the reference's."""
    return tuple(model_names.get(kind.names_head, kind.classes))


def computed(kind: Kind, heads: Iterable[str]) -> bool:
    """Whether a model that ran these heads (a map group's `heads`) finds this kind."""
    return kind.outline_head in set(heads)


def _map(head: str, form: str) -> StoredMap:
    return next(stored for stored in HEAD_MAPS[head] if stored.form == form)
