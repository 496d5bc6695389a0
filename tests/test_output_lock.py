"""One run per output folder: a second run is refused naming the first; a dead run's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cerberus_batch.cli import main
from cerberus_batch.errors import OutputError
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.output_folder import STALE_AFTER, OutputLock
from cerberus_batch.testing.slides import make_synthetic_slide
from helpers import small_cohort


def cli_run(cohort) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cerberus_batch.cli", "run", str(cohort), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


@pytest.mark.e2e
def test_second_run_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
    # A slide large enough that the first run is still working when the second one starts.
    (tmp_path / "slides").mkdir()
    make_synthetic_slide(tmp_path / "slides" / "synthetic.svs", size=(5000, 4000), seed=3)
    cohort = small_cohort(tmp_path, {"kind": "local", "workers": 1, "dashboard_address": ":0"})
    lock = OutputLayout(tmp_path / "out").lock
    first = cli_run(cohort)
    deadline = time.time() + 120
    while not (tmp_path / "out" / "ledger").is_dir():  # holding the lock and computing
        assert first.poll() is None and time.time() < deadline, first.communicate()[0][-2000:]
        time.sleep(0.05)
    holder = json.loads(lock.read_text())
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()

    second = subprocess.run([sys.executable, "-m", "cerberus_batch.cli", "run", str(cohort), "--no-progress"],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "another run holds this output folder" in lines[0], second.stderr
    assert f"pid {first.pid}" in lines[0] and socket.gethostname() in lines[0] and "started" in lines[0]
    assert first.poll() is None, "the first run must still hold the lock when the second is refused"

    os.killpg(first.pid, signal.SIGKILL)  # client, scheduler and workers: the lock file stays behind
    first.wait()
    assert json.loads(lock.read_text())["pid"] == first.pid

    third = cli_run(cohort)
    output = third.communicate(timeout=600)[0]
    assert third.returncode == 0, output[-2000:]
    assert "took over the lock" in output and f"pid {first.pid}" in output
    assert not lock.exists()
    report = json.loads((tmp_path / "out" / "run_report.json").read_text())
    assert report["status"] == "ok"


def lock_file(output, host: str, age: float) -> None:
    output.mkdir(parents=True, exist_ok=True)
    holder = {"host": host, "pid": 12345, "started": time.time() - age, "command": "cerberus-batch run", "token": "t"}
    lock = OutputLayout(output).lock
    lock.write_text(json.dumps(holder))
    os.utime(lock, (time.time() - age, time.time() - age))


def test_a_lock_from_another_host_is_stale_only_once_its_heartbeat_stops(tmp_path):
    # A shared filesystem: the holder's pid cannot be checked, only how fresh its heartbeat is.
    lock_file(tmp_path / "out", "gpu-node-7", age=STALE_AFTER / 3)
    with pytest.raises(OutputError, match=r"another run holds this output folder \(cerberus-batch run on gpu-node-7, pid 12345"):
        OutputLock(tmp_path / "out", "cerberus-batch run").acquire()
    lock_file(tmp_path / "out", "gpu-node-7", age=STALE_AFTER + 60)
    with OutputLock(tmp_path / "out", "cerberus-batch run") as lock:
        assert lock.taken_over is not None and lock.taken_over.host == "gpu-node-7"
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not lock.path.exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # the stale lock was not left aside


def test_an_unwritable_output_folder_is_named_as_such(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OutputError, match=r"a-file/out: cannot create the output folder"):
        OutputLock(tmp_path / "a-file" / "out", "cerberus-batch run").acquire()


@pytest.mark.e2e
def test_run_and_validate_name_an_unwritable_output_folder(tmp_path):
    (tmp_path / "a-file").write_text("x")
    cohort = small_cohort(tmp_path, {"kind": "local", "workers": 1, "dashboard_address": ":0"})
    cohort.write_text(cohort.read_text().replace("output: out", "output: a-file/out"))
    run = CliRunner().invoke(main, ["run", str(cohort), "--no-progress"])
    assert run.exit_code == 1
    expected = f"{tmp_path / 'a-file' / 'out'}: cannot create the output folder: {tmp_path / 'a-file'}: Not a directory"
    assert run.output.strip().splitlines() == [f"Error: {expected}"]
    validate = CliRunner().invoke(main, ["validate", str(cohort)], terminal_width=200)
    assert validate.exit_code == 1
    assert f"PROBLEM output: {expected}" in validate.output


def test_tile_takes_over_a_stale_lock_with_a_warning(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((300, 300, 3), 230, np.uint8)).save(images / "a.png")
    lock_file(tmp_path / "out", "gpu-node-7", age=STALE_AFTER + 60)
    # A process of its own: the warning goes through logging, which pytest would capture.
    result = subprocess.run([sys.executable, "-m", "cerberus_batch.cli", "tile", "--model-kind", "stain",
                             "--input-dir", str(images), "--output-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "took over the lock of a run that is gone (cerberus-batch run on gpu-node-7, pid 12345" in result.stderr
    assert not OutputLayout(tmp_path / "out").lock.exists()
