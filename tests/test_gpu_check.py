"""benchmarks/gpu_check.py runs end to end on the CPU (`--device cpu --quick`) and finds fp32 parity."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_on_cpu_quick(cmu_slide):  # cmu_slide: fetched here, so the script finds it in the cache
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    fp32 = [line for line in lines if line.strip().startswith("fp32 ") and "max|Δlogit|" in line]
    assert len(fp32) == 6  # every head
    for line in fp32:
        delta, agree = re.search(r"max\|Δlogit\| (\S+)\s+argmax agreement\s+(\S+)%", line).groups()
        assert float(delta) <= 1e-3 and float(agree) == 100.0, line
    assert len([line for line in lines if line.strip().startswith("bf16 ")]) == 6
    speeds = [float(m.group(1)) for line in lines if (m := re.search(r"batch\s+\d+:\s+(\S+) output Mpx/s", line))]
    assert len(speeds) == 2 and all(s > 0 for s in speeds)
    end = re.search(r"(\S+) output Mpx/s; largest process peak RSS (\S+) GB", done.stdout)
    assert end is not None and float(end.group(1)) > 0 and 0 < float(end.group(2)) <= 3.0
