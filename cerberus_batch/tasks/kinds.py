"""The Cerberus object kinds as post-processing finds them, and their two methods: a watershed
(nuclei, finished inside chunks where they can be) and thresholded regions (glands and lumens,
joined across chunks and painted whole). Each method does its own part of every stage, so the
stages (`chunk`, `merge`, `whole`) never ask which method a kind has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

import geopandas as gpd
import numpy as np
from scipy import ndimage

from cerberus_batch import vocabulary
from cerberus_batch.grid import Window
from cerberus_batch.quantisation import dequantise
from cerberus_batch.tasks.border import border_kind
from cerberus_batch.tasks.fragments import FOUR_NEIGHBOURS, Fragments, component_stats, fragments, join
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.instances import TissueCells, empty_table, instance_table, measured_table
from cerberus_batch.tasks.nuclei import find_supports, measure_nuclei
from cerberus_batch.tasks.postprocess import ObjectKind, foreground, segment_regions
from cerberus_batch.tasks.regions import PaintedRegions, overlaps
from cerberus_batch.tasks.windows import image_edges, read_classes, read_inner_contour, read_stored, sorted_table
from cerberus_batch.vocabulary import GLANDS, LUMENS, NUCLEI, TISSUE, Kind

if TYPE_CHECKING:
    from cerberus_batch.tasks.merge import Reduction
    from cerberus_batch.tasks.whole import WholeSlide


@dataclass(frozen=True)
class Watershed:
    """Nuclei: markers flooded within each 8-connected support of the mask (`tasks.nuclei`)."""

    finished_in_chunks = True  # a support inside a chunk's core is finished there; border tasks join the rest

    def foreground(self, inner: np.ndarray, contour: np.ndarray, threshold: float) -> np.ndarray:
        return (inner + contour) > threshold

    def chunk(
        self, maps: Mapping[str, Any], kind: ObjectKind, core: Window, geometry: SlideGeometry, tissue: TissueCells | None,
    ) -> tuple[gpd.GeoDataFrame, Fragments]:
        """The nuclei whose support lies inside the core, and the supports its edges cut as fragments."""
        prob = maps[kind.prob_map]
        stored = read_stored(prob, core)
        supports = find_supports(stored, kind)
        cut = supports.touching_edges()
        measured = measure_nuclei(stored, read_classes(maps, kind, core), supports, ~cut, kind,
                                  image_edges(core, prob.shape[1:]))
        table = measured_table(measured, kind=kind, origin=core[:2], map_width=prob.shape[2], geometry=geometry,
                               tissue=tissue)
        stats = (supports.boxes, supports.first, supports.area)
        return table, fragments(supports.labels, stats, cut, core[:2], prob.shape[2])

    def reduce(self, reduction: Reduction, kind: ObjectKind) -> None:
        """The chunks' nuclei and those on chunk borders no border task finished."""
        done = [result.tables[kind.name] for result in reduction.chunk_results if kind.name in result.tables]
        border, _ = border_kind(reduction.maps, kind, reduction.chunk_results, reduction.geometry, reduction.tissue,
                                finished=reduction.finished)
        reduction.tables[kind.name] = sorted_table([*done, border])

    def whole(self, whole: WholeSlide, kind: ObjectKind) -> None:
        stored = np.asarray(whole.maps[kind.prob_map])
        supports = find_supports(stored, kind)
        measured = measure_nuclei(stored, read_classes(whole.maps, kind, Window(0, 0, *stored.shape[1:])), supports,
                                  np.ones(len(supports), bool), kind)
        whole.tables[kind.name] = measured_table(measured, kind=kind, origin=(0, 0), map_width=stored.shape[2],
                                                 geometry=whole.geometry, tissue=whole.tissue)


@dataclass(frozen=True)
class Regions:
    """Glands and lumens: thresholded 4-connected components, each dilated and filled (`postprocess`)."""

    finished_in_chunks = False  # few and large: every component goes to the slide reduction

    def foreground(self, inner: np.ndarray, contour: np.ndarray, threshold: float) -> np.ndarray:
        return (inner - (contour > 0.5).astype(inner.dtype)) > threshold

    def chunk(
        self, maps: Mapping[str, Any], kind: ObjectKind, core: Window, geometry: SlideGeometry, tissue: TissueCells | None,
    ) -> tuple[None, Fragments]:
        """No table: every component inside the core, as fragments."""
        prob = maps[kind.prob_map]
        components, _ = ndimage.label(foreground(*read_inner_contour(prob, core), kind))
        stats = component_stats(components)
        return None, fragments(components, stats, np.ones(len(stats[1]), bool), core[:2], prob.shape[2])

    def reduce(self, reduction: Reduction, kind: ObjectKind) -> None:
        """The kept components joined across chunks, to be painted once all kinds are known (`regions`)."""
        shape = reduction.maps[kind.prob_map].shape[1:]
        joined = join([result.fragments[kind.name] for result in reduction.chunk_results], shape, FOUR_NEIGHBOURS)
        on_slide = reduction.geometry.on_slide(shape, kind.downsample)
        kept = joined.keep(joined.area >= kind.min_area)
        reduction.regions[kind.name] = PaintedRegions(reduction.maps, kind, kept, on_slide)

    def whole(self, whole: WholeSlide, kind: ObjectKind) -> None:
        labels = segment_regions(*dequantise(np.asarray(whole.maps[kind.prob_map])), kind)
        rows, cols = whole.geometry.on_slide(labels.shape, kind.downsample)
        labels[rows:] = labels[:, cols:] = 0  # dilated past the slide's edge: as `PaintedRegions.paint`
        if kind.inside is not None:
            if kind.inside not in whole.labelled:
                whole.tables[kind.name] = empty_table()
                return
            labels = _inside(whole, kind.inside, labels)
        whole.labelled[kind.name] = labels
        classes = read_classes(whole.maps, kind, Window(0, 0, *labels.shape))
        whole.tables[kind.name] = sorted_table([instance_table(
            labels, classes, np.unique(labels[labels > 0]), kind=kind, origin=(0, 0), map_width=labels.shape[1],
            geometry=whole.geometry, tissue=whole.tissue,
        )])


def _inside(whole: WholeSlide, container_kind: str, labels: np.ndarray) -> np.ndarray:
    """`labels` kept inside the container kind's objects; records each container's instance_id once per
    object it holds."""
    container = whole.labelled[container_kind]
    labels = labels * (container > 0)
    found, first = np.unique(container.ravel(), return_index=True)
    outer_id = np.zeros(int(found.max()) + 1, np.int64)
    outer_id[found] = first  # first-pixel raster position = the container's instance_id
    whole.contained[container_kind] = outer_id[overlaps(container, labels)]
    return labels


@dataclass(frozen=True)
class SlideKinds:
    """What a slide's maps are post-processed into: its object kinds, in table order, and the names of its tissue types."""

    objects: tuple[ObjectKind, ...]
    tissue_classes: tuple[str, ...] = TISSUE.classes

    @staticmethod
    def for_model(mode: Literal["wsi", "tile"] = "wsi", class_names: Mapping[str, Sequence[str]] | None = None) -> SlideKinds:
        """The kinds of a Cerberus model whose heads name their classes `class_names` (default: the reference's)."""
        return SlideKinds(cerberus_kinds(mode, class_names), vocabulary.class_names(TISSUE, class_names or {}))

    def fill_tables(
        self, maps: Mapping[str, Any], tables: dict[str, gpd.GeoDataFrame], step: Callable[[ObjectKind], None],
    ) -> dict[str, gpd.GeoDataFrame]:
        """`tables` with each object kind's, in order: `step` (a stage of its method) fills a kind the maps
        have; a kind without its probability map gets an empty table."""
        for kind in self.objects:
            if kind.prob_map not in maps:
                tables[kind.name] = empty_table()
            else:
                step(kind)
        return tables


def cerberus_kinds(
    mode: Literal["wsi", "tile"] = "wsi", class_names: Mapping[str, Sequence[str]] | None = None,
) -> tuple[ObjectKind, ObjectKind, ObjectKind]:
    """Nuclei, glands, lumens. WSI mode post-processes glands and lumens on their half-resolution maps
    (ds 0.5), tile mode at full resolution.

    `class_names` (per model head) renames the classes for the model that made the maps.
    """
    nuclei, glands, lumens = (_maps_of(kind, mode, class_names or {}) for kind in (NUCLEI, GLANDS, LUMENS))
    return (
        ObjectKind(method=Watershed(), threshold=0.5, min_area=8, **nuclei),
        region_kind(glands, base_kernel=11, base_area=1000, threshold=0.55),
        region_kind(lumens, base_kernel=3, base_area=150, threshold=0.5, inside=GLANDS.name),
    )


def _maps_of(kind: Kind, mode: str, class_names: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The ObjectKind fields the vocabulary gives: the kind, its maps' resolution in `mode`, its classes."""
    return dict(
        kind=kind, downsample=kind.prob_map.downsample if mode == "wsi" else 1,
        class_names=vocabulary.class_names(kind, class_names),
    )


def region_kind(
    maps: dict[str, Any], *, base_kernel: int, base_area: int, threshold: float, inside: str | None = None,
) -> ObjectKind:
    """A gland-like kind, the reference's parameters scaled to the resolution of its maps (ds = 1 / downsample)."""
    ds = 1 / maps["downsample"]
    return ObjectKind(
        method=Regions(), threshold=threshold, min_area=int(base_area * ds * ds), kernel=int((base_kernel - 1) * ds),
        inside=inside, **maps,
    )
