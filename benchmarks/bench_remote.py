"""Remote reads: requests, bytes fetched and wall per chunk read, for one slide as a local file, on S3
(moto's server on 127.0.0.1) and over HTTP (a local Range server), in one run. The slides: CMU-1-Small-Region
(one block), a synthetic slide, and a mosaic of CMU copies larger than a slide's block cache (BLOCK_SIZE x
CACHED_BLOCKS), so its chunks are fetched as they are read; its first --chunks chunks (raster order) are timed.

    python benchmarks/bench_remote.py [--chunk 1008] [--mosaic 10x6] [--chunks 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cerberus_batch.slides import open_slide, plan_chunks, tissue_mask
from cerberus_batch.slides.location import BLOCK_SIZE, CACHED_BLOCKS, Location, fetched
from cerberus_batch.tasks.infer import read_chunk
from cerberus_batch.testing.mosaic import write_mosaic
from cerberus_batch.testing.servers import FAKE_KEYS, range_server, s3_server
from cerberus_batch.testing.slides import make_synthetic_slide

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import fetch_cmu_small_region  # noqa: E402  (the tests' copy of CMU-1-Small-Region)


def measure(address: str, chunk: int, limit: int) -> tuple[int, float, float, float, float]:
    """Chunks timed (at most `limit`), and per chunk: mean requests, MB fetched, ms wall; plus the open's MB."""
    location = Location.parse(address)
    with fetched(location) as opening:
        view = open_slide(location).at_mpp(0.5)
        plan = plan_chunks(view, tissue_mask(view, "none"), chunk=chunk)
    per_chunk = []
    for c in plan.chunks[:limit]:
        started = time.perf_counter()
        with fetched(location) as got:
            read_chunk(view.read, c.x, c.y, c.w, c.h)
        per_chunk.append((got.requests, got.bytes / 1e6, (time.perf_counter() - started) * 1e3))
    view.slide.close()
    mean = np.mean(per_chunk, axis=0)
    return len(per_chunk), *mean, opening.bytes / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=1008)
    parser.add_argument("--mosaic", default="10x6", help="columns x rows of CMU copies (10x6: 22200x17802 px)")
    parser.add_argument("--chunks", type=int, default=60, help="chunks timed per slide and source")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    cmu = fetch_cmu_small_region()
    grid = tuple(int(n) for n in args.mosaic.split("x"))
    slides = {"cmu.svs": cmu, "synthetic.tif": make_synthetic_slide(folder / "synthetic.tif").path,
              "mosaic.svs": write_mosaic(folder / "mosaic.svs", cmu, grid).path}  # type: ignore[arg-type]
    print(f"block cache per open slide: {BLOCK_SIZE * CACHED_BLOCKS / 1e6:.0f} MB ({CACHED_BLOCKS} blocks of {BLOCK_SIZE / 1e6:.1f} MB)")
    with s3_server() as endpoint, range_server(folder) as http:
        os.environ.update(FAKE_KEYS, AWS_ENDPOINT_URL=endpoint)
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        print(f"{'slide':<14} {'source':<6} {'MB':>6} {'timed':>6} {'req/chunk':>9} {'MB/chunk':>9} {'ms/chunk':>9} {'open MB':>8}")
        for name, path in slides.items():
            if not (folder / name).exists():
                (folder / name).write_bytes(Path(path).read_bytes())
            s3.upload_file(str(path), "bench", name)
            for source, address in (("file", str(path)), ("s3", f"s3://bench/{name}"), ("http", f"{http.url}/{name}")):
                chunks, requests, mb, ms, opened = measure(address, args.chunk, args.chunks)
                size = Path(path).stat().st_size / 1e6
                print(f"{name:<14} {source:<6} {size:>6.1f} {chunks:>6} {requests:>9.1f} {mb:>9.2f} {ms:>9.1f} {opened:>8.2f}")


if __name__ == "__main__":
    main()
