"""QC overview of one slide, from its maps and tables.

Left, a thumbnail of the slide with gland and lumen outlines and a dot per
nucleus, coloured by class; right, the tissue-type map on the same footing;
far right, the legend. Memory stays bounded: the slide is read only at
thumbnail resolution and the tables in row batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import shapely
from PIL import Image, ImageDraw, ImageFont

from cerberus_batch.grid import CELL
from cerberus_batch.slides import Transform, open_slide
from cerberus_batch.storage.colours import RGB, instance_colour, tissue_colours
from cerberus_batch.storage.overview import save_overview
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.tables import table_batches
from cerberus_batch.storage.zarr_maps import open_slide_maps
from cerberus_batch.vocabulary import DRAWING_ORDER, GLANDS, KINDS, LUMENS, NUCLEI, OBJECTS, TISSUE, class_names

SIZE = 1024  # thumbnail px along the slide's longer side
MARGIN = 16
HEADER = 28  # title line above the panels
LEGEND_WIDTH = 200
ROW = 16  # legend line height
SWATCH = 11
OUTLINE_WIDTH = {GLANDS.name: 2, LUMENS.name: 1}
FONT_SIZE = 12


def write_overview(output: str | Path, slide_id: str, size: int = SIZE) -> Path:
    """Draw the slide's QC overview from its maps and tables; the PNG appears whole or not at all."""
    group = open_slide_maps(OutputLayout(output).maps(slide_id))
    attrs = dict(group.attrs)
    with open_slide(attrs["slide_path"]) as slide:
        width, height = slide.info.dimensions
        thumbnail = slide.thumbnail(size)
    factor = max(width, height) / size  # level-0 px per thumbnail px, as `Slide.thumbnail` scales
    picture = Image.fromarray(thumbnail)
    counts = {}
    for kind in DRAWING_ORDER:
        parts = OutputLayout(output).table_files(kind.name, slide_id)
        counts[kind.name] = sum(pq.ParquetFile(path).metadata.num_rows for path in parts)
        if counts[kind.name]:
            draw_instances(picture, kind.name, table_batches(parts), factor)
    tissue = None
    if TISSUE.class_map.name in group.array_keys():
        cells = np.asarray(group[TISSUE.class_map.name][:])
        names = class_names(TISSUE, attrs["class_names"])
        tissue = tissue_panel(cells, names, Transform.from_dict(attrs["transform"]), factor, thumbnail.shape[:2])
    title = f"{slide_id}: " + ", ".join(f"{counts[kind.name]} {kind.name}" for kind in OBJECTS)
    return save_overview(output, slide_id, compose(picture, tissue, legend_sections(attrs), title))


def draw_instances(picture: Image.Image, kind: str, parts: Iterable[pd.DataFrame], factor: float, dots: bool = True) -> None:
    """Draw instances on `picture`, whose px spans `factor` level-0 px: glands and lumens as outlines,
    nuclei as dots (or, with `dots=False`, as outlines one px wide)."""
    draw = ImageDraw.Draw(picture)
    radius = 1 if factor < 8 else 0  # 3-px dots while nuclei are bigger than that, else single px
    for part in parts:
        for name, rows in part.groupby("class_name", sort=True):
            colour = instance_colour(kind, str(name))
            if kind == NUCLEI.name and dots:
                _dots(picture, rows["centroid_x"].to_numpy() / factor, rows["centroid_y"].to_numpy() / factor, radius, colour)
                continue
            width = OUTLINE_WIDTH.get(kind, 1)
            rings = shapely.get_exterior_ring(rows["geometry"].to_numpy())
            coords, index = shapely.get_coordinates(rings, return_index=True)
            for ring in np.split(coords / factor, np.flatnonzero(np.diff(index)) + 1):
                draw.line([tuple(p) for p in ring], fill=colour, width=width)


def _dots(picture: Image.Image, x: np.ndarray, y: np.ndarray, radius: int, colour: RGB) -> None:
    pixels = np.asarray(picture).copy()
    h, w = pixels.shape[:2]
    cx, cy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            px, py = cx + dx, cy + dy
            inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
            pixels[py[inside], px[inside]] = colour
    picture.paste(Image.fromarray(pixels))


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


def legend_sections(attrs: dict[str, Any]) -> list[tuple[str, list[tuple[str, RGB]]]]:
    """(heading, [(class name, colour)]) for every kind the slide's model predicts."""
    heads = set(attrs.get("heads", ()))
    sections = []
    for kind in KINDS:
        if kind.outline_head not in heads:
            continue
        names = class_names(kind, attrs["class_names"])
        if kind in OBJECTS:
            # Class 0 is "no label": the class vote only gives it when nothing else is there.
            entries = [(name, instance_colour(kind.name, name)) for name in names[1:]]
        else:
            entries = list(zip(names, tissue_colours(names)))
        sections.append((kind.name.capitalize(), entries))
    return sections


def compose(
    thumbnail: Image.Image, tissue: Image.Image | None, sections: list[tuple[str, list[tuple[str, RGB]]]], title: str,
) -> Image.Image:
    """Title above; thumbnail, tissue panel (grey when there is no tissue map) and legend side by side."""
    w, h = thumbnail.size
    legend_height = ROW * sum(1 + len(entries) for _, entries in sections)
    canvas = Image.new("RGB", (3 * MARGIN + 2 * w + LEGEND_WIDTH, HEADER + max(h, legend_height) + MARGIN), "white")
    font = ImageFont.load_default(FONT_SIZE)
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, (HEADER - FONT_SIZE) // 2), title, fill="black", font=font)
    canvas.paste(thumbnail, (MARGIN, HEADER))
    right = 2 * MARGIN + w
    if tissue is None:
        draw.rectangle((right, HEADER, right + w - 1, HEADER + h - 1), fill=(200, 200, 200))
        draw.text((right + MARGIN, HEADER + MARGIN), "no tissue-type map", fill="black", font=font)
    else:
        canvas.paste(tissue, (right, HEADER))
    x, y = right + w + MARGIN, HEADER
    for heading, entries in sections:
        draw.text((x, y), heading, fill="black", font=font)
        y += ROW
        for name, colour in entries:
            draw.rectangle((x, y + 2, x + SWATCH - 1, y + 1 + SWATCH), fill=colour, outline="black")
            draw.text((x + SWATCH + 6, y), name, fill="black", font=font)
            y += ROW
    return canvas
