"""Instances per second per core of post-processing, ours against a plain baseline, in one process.

Ours: the chunk tasks plus the slide reduction, as a run does them (`chunk_instances`, `merge_slide`), at
the run's default chunk size unless `--chunk` says otherwise, given the compared kinds' maps only.
Baseline: the spec written plainly on the whole map at once — §6.3 with scipy / scikit-image
(erosion, small-object removal, hole filling, skimage's watershed), §6.1/6.2 for glands and lumens
(OpenCV dilation per component), and §6.4 per instance with OpenCV `moments` + `findContours` and a
class vote by `np.unique` — the way the reference does it. One core for both (OMP/OpenCV threads 1).

    pip install -e ".[bench]"
    python benchmarks/bench_postproc.py                                   # synthetic 4032 × 4032 px
    python benchmarks/bench_postproc.py --maps OUT/maps/<slide>            # a slide's maps, after a run
    python benchmarks/bench_postproc.py --chunk 1008
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402  (after the thread setting)
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402
from skimage.morphology import remove_small_objects  # noqa: E402
from skimage.segmentation import watershed  # noqa: E402

from cerberus_batch.pipeline.config import ProcessingSpec  # noqa: E402
from cerberus_batch.quantisation import dequantise  # noqa: E402
from cerberus_batch.slides import Transform  # noqa: E402
from cerberus_batch.storage.zarr_maps import map_arrays, open_slide_maps  # noqa: E402
from cerberus_batch.tasks.chunk import chunk_instances  # noqa: E402
from cerberus_batch.tasks.geometry import SlideGeometry  # noqa: E402
from cerberus_batch.tasks.kinds import SlideKinds, Watershed, cerberus_kinds  # noqa: E402
from cerberus_batch.tasks.merge import merge_slide  # noqa: E402
from cerberus_batch.tasks.postprocess import ObjectKind  # noqa: E402
from cerberus_batch.testing.maps import synthetic_maps  # noqa: E402

REPEATS = 3  # best of, for both


def plain_nuclei(inner: np.ndarray, contour: np.ndarray, kind: ObjectKind) -> np.ndarray:
    """Spec §6.3 with library calls on the whole map."""
    mask = (inner + contour) > kind.threshold
    body = cv2.erode(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))) > 0
    body = remove_small_objects(ndimage.label(body)[0], max_size=kind.min_area - 1) > 0
    seeds = remove_small_objects(ndimage.label(inner > 0.5)[0], max_size=kind.marker_min_area - 1) > 0
    markers, _ = ndimage.label(ndimage.binary_fill_holes(seeds))
    return watershed(-inner, markers, mask=body)


def plain_regions(inner: np.ndarray, contour: np.ndarray, kind: ObjectKind) -> np.ndarray:
    """Spec §6.1 / 6.2: threshold, remove small, then per component dilate and fill in its padded crop."""
    mask = (inner - (contour > 0.5)) > kind.threshold
    labels, _ = ndimage.label(remove_small_objects(ndimage.label(mask)[0], max_size=kind.min_area - 1) > 0)
    out = np.zeros(labels.shape, np.int32)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kind.kernel, kind.kernel))
    for index, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        y0, x0 = max(rows.start - kind.pad, 0), max(cols.start - kind.pad, 0)
        y1, x1 = rows.stop + kind.pad, cols.stop + kind.pad
        grown = cv2.dilate((labels[y0:y1, x0:x1] == index).astype(np.uint8), kernel)
        out[y0:y1, x0:x1][ndimage.binary_fill_holes(grown)] = index
    return out


def plain_records(labels: np.ndarray, classes: np.ndarray | None) -> list[tuple]:
    """Spec §6.4 per instance: box, OpenCV moments and first contour, class vote."""
    records = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        crop = (labels[box] == index).astype(np.uint8)
        moments = cv2.moments(crop)
        contours, _ = cv2.findContours(crop, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        outline = contours[0].squeeze().astype(np.int32)
        if outline.ndim != 2 or outline.shape[0] < 3:
            continue
        found = 1
        if classes is not None:
            values, counts = np.unique(classes[box][crop > 0], return_counts=True)
            order = np.argsort(-counts)
            found = values[order[1]] if values[order[0]] == 0 and len(values) > 1 else values[order[0]]
        centre = (moments["m10"] / moments["m00"] + box[1].start, moments["m01"] / moments["m00"] + box[0].start)
        records.append((centre, outline + (box[1].start, box[0].start), found))
    return records


def best_of(run) -> tuple[float, object]:
    times, result = [], None
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", help="Zarr group of one slide's maps; synthetic maps when omitted")
    parser.add_argument("--size", type=int, default=4032, help="synthetic slide size, processing px")
    parser.add_argument("--chunk", type=int, default=ProcessingSpec().chunk, help="chunk size, processing px (multiple of 144)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    if args.maps:
        group = open_slide_maps(args.maps)
        maps = {name: array[:] for name, array in map_arrays(group).items()}
        source = args.maps
    else:
        maps = synthetic_maps(args.size, args.size, seed=0)
        source = f"synthetic {args.size} x {args.size}"
    height, width = maps["nuclei_prob"].shape[1:]
    boxes = [(x, y, min(args.chunk, width - x), min(args.chunk, height - y))
             for y in range(0, height, args.chunk) for x in range(0, width, args.chunk)]
    geometry = SlideGeometry("bench", Transform(1.0, 1.0), 0.5)
    nuclei, glands, lumens = cerberus_kinds()
    print(f"maps: {source}, {height} x {width} px, {len(boxes)} chunks of {args.chunk} px, 1 core, best of {REPEATS}")
    chunk_instances(maps, boxes[0], geometry, SlideKinds((nuclei,)))  # compile once, outside the timing
    for label, kinds in (("nuclei", (nuclei,)), ("glands+lumens", (glands, lumens))):
        present = [k for k in kinds if k.prob_map in maps]
        if not present:
            print(f"{label:>14}: no maps")
            continue

        own = {name: maps[name] for kind in present for name in (kind.prob_map, kind.class_map) if name in maps}

        def ours():
            results = [chunk_instances(own, box, geometry, SlideKinds(tuple(present))) for box in boxes]
            return merge_slide(own, results, geometry, SlideKinds(tuple(present)))

        def baseline():
            found = 0
            for kind in present:
                inner, contour = dequantise(maps[kind.prob_map])
                labels = (plain_nuclei if isinstance(kind.method, Watershed) else plain_regions)(inner, contour, kind)
                found += len(plain_records(labels, maps.get(kind.class_map) if kind.class_map else None))
            return found

        ours_s, tables = best_of(ours)
        base_s, base_count = best_of(baseline)
        count = sum(len(tables[k.name]) for k in present)
        print(f"{label:>14}: ours {count} instances in {ours_s:.3f} s = {count / ours_s:,.0f}/s/core; "
              f"plain baseline {base_count} in {base_s:.3f} s = {base_count / base_s:,.0f}/s/core; "
              f"ratio {(count / ours_s) / (base_count / base_s):.2f}x")


if __name__ == "__main__":
    main()
