"""Instances per second per core of post-processing: nuclei (chunk tasks + reduction) and glands/lumens.

One process, one core. Maps come from a slide's Zarr group (`<output>/maps/<slide_id>`) or
are synthetic; the chunk tasks and the slide reduction are timed separately per kind.

    python benchmarks/bench_postproc.py                                   # synthetic 4032 × 4032 px
    python benchmarks/bench_postproc.py --maps out/maps/CMU-1 --chunk 1008
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from cerberus_batch.slides import Transform
from cerberus_batch.storage.zarr_maps import open_slide_maps
from cerberus_batch.tasks.merge import chunk_instances, merge_slide
from cerberus_batch.tasks.postprocess import cerberus_kinds
from cerberus_batch.testing.maps import synthetic_maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", help="Zarr group of one slide's maps; synthetic maps when omitted")
    parser.add_argument("--size", type=int, default=4032, help="synthetic slide size, processing px")
    parser.add_argument("--chunk", type=int, default=1008, help="chunk size, processing px (multiple of 144)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.maps:
        group = open_slide_maps(args.maps)
        maps = {name: group[name] for name in group.array_keys()}
        source = args.maps
    else:
        maps = synthetic_maps(args.size, args.size, seed=0)
        source = f"synthetic {args.size} x {args.size}"
    height, width = maps["nuclei_prob"].shape[1:]
    boxes = [(x, y, min(args.chunk, width - x), min(args.chunk, height - y))
             for y in range(0, height, args.chunk) for x in range(0, width, args.chunk)]
    place = dict(slide_id="bench", transform=Transform(1.0, 1.0), mpp=0.5)
    nuclei, glands, lumens = cerberus_kinds()
    print(f"maps: {source}, {height} x {width} px, {len(boxes)} chunks of {args.chunk} px, 1 core")
    for label, kinds in (("nuclei", (nuclei,)), ("glands+lumens", (glands, lumens))):
        start = time.perf_counter()
        results = [chunk_instances(maps, box, kinds=kinds, **place) for box in boxes]
        chunked = time.perf_counter() - start
        start = time.perf_counter()
        tables = merge_slide(maps, results, kinds=kinds, **place)
        merged = time.perf_counter() - start
        count = sum(len(tables[k.name]) for k in kinds)
        finished_in_chunks = sum(len(r.tables.get("nuclei", ())) for r in results)
        print(f"{label:>14}: {count} instances ({finished_in_chunks} finished in chunks), "
              f"chunk tasks {chunked:.2f} s, reduction {merged:.2f} s, "
              f"{count / (chunked + merged):.0f} instances/s/core "
              f"({np.prod((height, width)) / 1e6 / (chunked + merged):.1f} Mpx/s/core)")


if __name__ == "__main__":
    main()
