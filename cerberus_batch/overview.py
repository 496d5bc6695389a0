"""QC picture of one slide, from its maps and tables.

Top row: a thumbnail of the slide with every instance outlined in its class colour (nuclei as
dots where the thumbnail is too coarse for a nucleus to show), the tissue-type map on the same
footing, and the legend with each class's count. Bottom row: full-resolution crops of the
densest nuclei region and of a random tissue region, where each nucleus's outline shows. A kind
whose head the model did not run says so ("not computed"), never "0". Memory stays bounded: the
slide is read at thumbnail resolution plus the crops, and the tables in row batches.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import shapely
from PIL import Image, ImageDraw, ImageFont

from cerberus_batch.grid import CELL
from cerberus_batch.slides import ChunkPlan, Transform, open_slide
from cerberus_batch.slides.location import Location
from cerberus_batch.storage.colours import RGB, instance_colour, tissue_colours
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.overview import save_overview
from cerberus_batch.storage.summary import summary_class_counts
from cerberus_batch.storage.tables import class_counts, table_batches
from cerberus_batch.storage.zarr_maps import map_arrays, open_slide_maps
from cerberus_batch.vocabulary import DRAWING_ORDER, GLANDS, KINDS, LUMENS, NUCLEI, OBJECTS, TISSUE, class_names, computed

SIZE = 1024  # thumbnail px along the slide's longer side
CROP = 512  # level-0 px per side of a full-resolution crop
MARGIN = 16
FONT_SIZE = 16  # legend and captions: readable at 100%
TITLE_SIZE = 20
HEADER = 40  # title line above the panels
CAPTION = 28  # caption line above each crop
LEGEND_WIDTH = 330
ROW = 22  # legend line height
SWATCH = 14
OUTLINE_WIDTH = {GLANDS.name: 2, LUMENS.name: 1}
# A nucleus (6-10 µm across) shows as an outline while a thumbnail px is at most this many µm.
OUTLINE_UM_PER_PX = 2.0
NOT_COMPUTED = "not computed"


def write_overview(
    output: str | Path, slide_id: str, summary: Mapping[str, Any] | None = None, size: int = SIZE, source: Location | None = None,
) -> Path:
    """Draw the slide's QC picture from its maps and tables (class counts from its `summary` row where
    given); the PNG appears whole or not at all. `source`: the slide with its credentials, where the
    address its maps record (shown without them) is not enough."""
    layout = OutputLayout(output)
    group = open_slide_maps(layout.maps(slide_id))
    attrs = dict(group.attrs)
    found = [kind for kind in DRAWING_ORDER if computed(kind, attrs.get("heads", ()))]
    parts = {kind.name: layout.table_files(kind.name, slide_id) for kind in found}
    with open_slide(source or attrs["slide_path"]) as slide:
        width, height = slide.info.dimensions
        thumbnail = Image.fromarray(slide.thumbnail(size))
        regions = crop_regions(slide_id, parts.get(NUCLEI.name, []), _plan(layout, slide_id), (width, height))
        crops = [(caption, box, Image.fromarray(slide.read_level(0, *box[:2], CROP, CROP))) for caption, box in regions]
    factor = max(width, height) / size  # level-0 px per thumbnail px, as `Slide.thumbnail` scales
    level0_mpp = float(attrs["mpp"]) / Transform.from_dict(attrs["transform"]).scale_x
    for kind in found:
        dots = kind is NUCLEI and factor * level0_mpp > OUTLINE_UM_PER_PX
        for part in table_batches(parts[kind.name]):  # one read of the table for every panel
            draw_instances(thumbnail, kind.name, [part], factor, dots=dots)
            for _, box, crop in crops:
                draw_instances(crop, kind.name, [_within(part, box)], 1.0, origin=box[:2])
    counts = {  # the merge's summary row has them; else one more read of the tables' class column
        kind.name: summary_class_counts(summary, kind.name, class_names(kind, attrs["class_names"])) if summary
        else class_counts(output, kind.name, slide_id)
        for kind in found
    }
    tissue = None
    maps = map_arrays(group)
    if TISSUE.class_map.name in maps:
        cells = np.asarray(maps[TISSUE.class_map.name][:])
        names = class_names(TISSUE, attrs["class_names"])
        tissue = tissue_panel(cells, names, Transform.from_dict(attrs["transform"]), factor, thumbnail.size[::-1])
    title = f"{slide_id}: " + ", ".join(
        f"{sum(counts[kind.name].values()):,} {kind.name}" if kind.name in counts else f"{kind.name} {NOT_COMPUTED}"
        for kind in OBJECTS
    )
    picture = compose(thumbnail, tissue, legend_sections(attrs, counts), title, [(c, crop) for c, _, crop in crops])
    return save_overview(output, slide_id, picture)


def draw_instances(
    picture: Image.Image, kind: str, parts: Iterable[pd.DataFrame], factor: float, dots: bool = False,
    origin: tuple[float, float] = (0.0, 0.0),
) -> None:
    """Outline instances on `picture`, whose px spans `factor` level-0 px and whose corner lies at level-0
    `origin`; with `dots`, nuclei are drawn as dots instead (where an outline would be too small to see)."""
    draw = ImageDraw.Draw(picture)
    radius = 1 if factor < 8 else 0  # 3-px dots while nuclei are bigger than that, else single px
    dots = dots and kind == NUCLEI.name
    pixels = np.array(picture) if dots else None  # every class's dots drawn into one copy, pasted back once
    ox, oy = origin
    for part in parts:
        for name, rows in part.groupby("class_name", sort=True):
            colour = instance_colour(kind, str(name))
            if pixels is not None:
                x, y = (rows["centroid_x"].to_numpy() - ox) / factor, (rows["centroid_y"].to_numpy() - oy) / factor
                _dots(pixels, x, y, radius, colour)
                continue
            width = OUTLINE_WIDTH.get(kind, 1)
            rings = shapely.get_exterior_ring(rows["geometry"].to_numpy())
            coords, index = shapely.get_coordinates(rings, return_index=True)
            for ring in np.split((coords - (ox, oy)) / factor, np.flatnonzero(np.diff(index)) + 1):
                draw.line([tuple(p) for p in ring], fill=colour, width=width)
    if pixels is not None:
        picture.paste(Image.fromarray(pixels))


def _dots(pixels: np.ndarray, x: np.ndarray, y: np.ndarray, radius: int, colour: RGB) -> None:
    h, w = pixels.shape[:2]
    cx, cy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            px, py = cx + dx, cy + dy
            inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
            pixels[py[inside], px[inside]] = colour


def _within(part: pd.DataFrame, box: tuple[int, int, int, int]) -> pd.DataFrame:
    """The rows whose outline reaches into the level-0 `box` (x, y, w, h)."""
    x, y, w, h = box
    return part[shapely.intersects(part["geometry"].to_numpy(), shapely.box(x, y, x + w, y + h))]


def _plan(layout: OutputLayout, slide_id: str) -> ChunkPlan | None:
    path = layout.plan(slide_id)
    return ChunkPlan.from_json(path.read_text()) if path.is_file() else None


def crop_regions(
    slide_id: str, nuclei_parts: Sequence[Path], plan: ChunkPlan | None, dimensions: tuple[int, int],
) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(caption, level-0 box) of the crops: the CROP-px square holding the most nuclei (on a CROP grid),
    and one centred on a tissue cell drawn at random (seeded by the slide id, so a redraw shows the same)."""
    width, height = dimensions
    regions = []
    if nuclei_parts:
        bins = (max(1, -(-height // CROP)), max(1, -(-width // CROP)))
        density = np.zeros(bins, np.int64)
        for part in table_batches(nuclei_parts, columns=("centroid_x", "centroid_y")):
            rows = np.clip((part["centroid_y"].to_numpy() // CROP).astype(np.int64), 0, bins[0] - 1)
            cols = np.clip((part["centroid_x"].to_numpy() // CROP).astype(np.int64), 0, bins[1] - 1)
            np.add.at(density, (rows, cols), 1)
        if density.any():
            row, col = np.unravel_index(int(np.argmax(density)), bins)
            box = _clamped(col * CROP, row * CROP, dimensions)
            regions.append((f"Densest nuclei region, x {box[0]}, y {box[1]} (full resolution)", box))
    if plan is not None:
        cells = np.argwhere(plan.tissue_cells() > 0)
        if len(cells):
            row, col = cells[np.random.default_rng(zlib.crc32(slide_id.encode())).integers(len(cells))]
            cx, cy = plan.transform.to_level0((col + 0.5) * plan.cell, (row + 0.5) * plan.cell)
            box = _clamped(int(cx) - CROP // 2, int(cy) - CROP // 2, dimensions)
            regions.append((f"Random tissue region, x {box[0]}, y {box[1]} (full resolution)", box))
    return regions


def _clamped(x: int, y: int, dimensions: tuple[int, int]) -> tuple[int, int, int, int]:
    """A CROP-px box at (x, y) moved inside the slide where the slide is big enough."""
    width, height = dimensions
    return int(max(0, min(x, width - CROP))), int(max(0, min(y, height - CROP))), CROP, CROP


def tissue_panel(
    cells: np.ndarray, names: Sequence[str], transform: Transform, factor: float, shape: tuple[int, int],
) -> Image.Image:
    """The tissue-type map sampled at the centre of every thumbnail px (level-0 = px * factor)."""
    h, w = shape
    x, y = transform.from_level0((np.arange(w) + 0.5) * factor, (np.arange(h) + 0.5) * factor)
    cols = np.clip(np.floor(x / CELL).astype(np.int64), 0, cells.shape[1] - 1)
    rows = np.clip(np.floor(y / CELL).astype(np.int64), 0, cells.shape[0] - 1)
    count = max(len(names), int(cells.max(initial=0)) + 1)
    palette = np.array(tissue_colours(list(names) + [str(i) for i in range(len(names), count)]), np.uint8)
    return Image.fromarray(palette[cells[rows[:, None], cols[None, :]]])


def legend_sections(
    attrs: dict[str, Any], counts: dict[str, Any],
) -> list[tuple[str, list[tuple[str, RGB | None]]]]:
    """(heading, [(entry, colour)]) for every kind: its classes with their counts where its head ran,
    else one uncoloured "not computed" line."""
    sections = []
    for kind in KINDS:
        heading = kind.name.capitalize()
        if not computed(kind, attrs.get("heads", ())):
            sections.append((heading, [(f"{NOT_COMPUTED} (no {kind.outline_head} head)", None)]))
            continue
        names = class_names(kind, attrs["class_names"])
        if kind in OBJECTS:
            # Class 0 is "no label": the class vote only gives it when nothing else is there.
            entries = [(f"{name}  {counts[kind.name].get(name, 0):,}", instance_colour(kind.name, name)) for name in names[1:]]
        else:
            entries = list(zip(names, tissue_colours(names)))
        sections.append((heading, entries))
    return sections


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size)


def compose(
    thumbnail: Image.Image, tissue: Image.Image | None, sections: list[tuple[str, list[tuple[str, RGB | None]]]],
    title: str, crops: Sequence[tuple[str, Image.Image]] = (),
) -> Image.Image:
    """Title above; thumbnail, tissue panel (grey when there is no tissue map) and legend side by side;
    the crops below, each under its caption."""
    w, h = thumbnail.size
    legend_height = ROW * sum(1 + len(entries) for _, entries in sections)
    top = HEADER + max(h, legend_height) + MARGIN
    crops_height = max((CAPTION + crop.size[1] + MARGIN for _, crop in crops), default=0)
    crops_width = sum(crop.size[0] + MARGIN for _, crop in crops) + MARGIN
    canvas = Image.new("RGB", (max(3 * MARGIN + 2 * w + LEGEND_WIDTH, crops_width), top + crops_height), "white")
    font, bold = _font(FONT_SIZE), _font(TITLE_SIZE)
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, (HEADER - TITLE_SIZE) // 2), title, fill="black", font=bold)
    canvas.paste(thumbnail, (MARGIN, HEADER))
    right = 2 * MARGIN + w
    if tissue is None:
        draw.rectangle((right, HEADER, right + w - 1, HEADER + h - 1), fill=(200, 200, 200))
        draw.text((right + MARGIN, HEADER + MARGIN), f"tissue types {NOT_COMPUTED}", fill="black", font=font)
    else:
        canvas.paste(tissue, (right, HEADER))
    x, y = right + w + MARGIN, HEADER
    for heading, entries in sections:
        draw.text((x, y), heading, fill="black", font=bold)
        y += ROW
        for name, colour in entries:
            if colour is not None:
                draw.rectangle((x, y + 3, x + SWATCH - 1, y + 2 + SWATCH), fill=colour, outline="black")
            draw.text((x + SWATCH + 8, y), name, fill="black" if colour else (90, 90, 90), font=font)
            y += ROW
    x = MARGIN
    for caption, crop in crops:
        draw.text((x, top + (CAPTION - FONT_SIZE) // 2), caption, fill="black", font=font)
        canvas.paste(crop, (x, top + CAPTION))
        x += crop.size[0] + MARGIN
    return canvas
