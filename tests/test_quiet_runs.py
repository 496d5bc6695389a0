"""A run's console holds our lines only: no library warning at shutdown, no worker traceback on Ctrl-C.

Real runs of the demo's settings in a subprocess: a local cluster of two worker processes (TLS on 127.0.0.1).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cerberus_batch.storage.layout import OutputLayout

pytestmark = pytest.mark.e2e  # every test here runs a cohort

# What the libraries say in their own voices: logging's "name - LEVEL -", warnings, tracebacks, asyncio's.
LIBRARY_VOICE = re.compile(r"WARNING|Warning|ERROR|Traceback|KeyboardInterrupt|distributed\.|Future exception|Aborted")
DEMO = Path(__file__).parents[1] / "configs" / "demo.yaml"  # the README's first run


def demo_cohort_of(folder, slides: int):
    """The demo's settings on `slides` copies of its first slide (1008-px chunks: the workers are busy when Ctrl-C comes)."""
    (folder / "slides").mkdir()
    for index in range(slides):
        shutil.copyfile(DEMO.parent / "demo" / "slides" / "demo-a.svs", folder / "slides" / f"s{index:02d}.svs")
    body = {**yaml.safe_load(DEMO.read_text()), "output": "out", "slides": {"glob": "slides/*.svs"}}
    (folder / "cohort.yaml").write_text(yaml.safe_dump(body))
    return folder / "cohort.yaml"


def start_run(cohort):
    # Ctrl-C's default action, as a terminal's shell starts a command (a background job inherits SIGINT ignored).
    return subprocess.Popen([sys.executable, "-m", "cerberus_batch.cli", "run", cohort.name, "--no-progress"], cwd=cohort.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_the_demo_run_prints_no_library_warnings(tmp_path):
    shutil.copytree(DEMO.parent / "demo", tmp_path / "demo")  # its slides
    shutil.copyfile(DEMO, tmp_path / DEMO.name)
    run = start_run(tmp_path / DEMO.name)
    console = run.communicate(timeout=400)[0]
    print(console)
    assert run.returncode == 0, console
    assert [line for line in console.splitlines() if LIBRARY_VOICE.search(line)] == []
    assert "2/2 slides done" in console
    assert OutputLayout(tmp_path / "out" / "demo").run_log.exists()  # where they went


def test_ctrl_c_is_one_line(tmp_path):
    run = start_run(demo_cohort_of(tmp_path, 8))
    console = []
    deadline = time.time() + 240
    for line in run.stdout:  # the workers are up and computing once the dashboard is named
        console.append(line)
        assert time.time() < deadline, console
        if line.startswith("Dashboard: "):
            break
    time.sleep(1.5)
    os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    console += run.communicate(timeout=120)[0].splitlines(keepends=True)
    print("".join(console))
    assert run.returncode == 130, console
    assert [line for line in console if LIBRARY_VOICE.search(line)] == []
    assert console[-1] == "Interrupted: rerun the same command to resume.\n"
    assert len(console) <= 4  # the busy dashboard port (maybe), the dashboard, the count, the interrupt
