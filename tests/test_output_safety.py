"""Inputs and user files are never touched: an output folder that is, holds or lies inside an input is
refused before anything is written; a user's file or folder where a run would write is refused, in one
line, before any work starts; `--fresh` removes only what we wrote; a kill's leftovers are swept."""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from cerberus_batch.cli import main
from cerberus_batch.errors import OutputError
from cerberus_batch.model.stain import StainPredictor
from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.pipeline.tile import run_tile_mode
from cerberus_batch.storage.atomic import atomic_path
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.testing.slides import make_synthetic_slide
from helpers import write_cohort

DEMO_SLIDE = Path(__file__).parent.parent / "configs" / "demo" / "slides" / "demo-a.svs"


def tree_hashes(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, with the sha256 of each file's bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(folder.rglob("*"))
    }


def image_folder(folder: Path) -> Path:
    """D/a.png beside D/a/b.png: the layout whose folder `a` tile mode once deleted."""
    rng = np.random.default_rng(0)
    (folder / "a").mkdir(parents=True)
    for path in (folder / "a.png", folder / "a" / "b.png"):
        Image.fromarray(rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)).save(path)
    return folder


@pytest.mark.parametrize("where", ["equal", "inside", "containing"])
def test_tile_refuses_an_output_that_overlaps_the_input(tmp_path, where):
    images = image_folder(tmp_path / "D" / "images")
    output = {"equal": images, "inside": images / "a" / "out", "containing": tmp_path / "D"}[where]
    before = tree_hashes(tmp_path)
    result = CliRunner().invoke(main, ["tile", "--model-kind", "stain", "--input-dir", str(images), "--output-dir", str(output)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(images) in lines[0] and str(output.resolve()) in lines[0], result.output
    assert tree_hashes(tmp_path) == before  # not a byte added, changed or removed


def test_tile_never_replaces_a_folder_it_did_not_write(tmp_path):
    # The output is apart from the input, but already holds a user's folder named like an image.
    images = image_folder(tmp_path / "images")
    Image.open(images / "a.png").save(images / "c.png")
    output = tmp_path / "out"
    (output / "c").mkdir(parents=True)
    (output / "c" / "precious.txt").write_text("years of work")
    before = tree_hashes(output)
    # Refused in one line naming it, before any image is processed.
    with pytest.raises(OutputError, match=f"^{re.escape(str(output / 'c'))}: exists and was not written by cerberus-batch") as refused:
        run_tile_mode(images, output, StainPredictor())
    assert "\n" not in str(refused.value)
    assert tree_hashes(output) == before
    # Once the user's folder is gone, the rerun writes `c`, and a third run replaces what we wrote;
    # a/b.png's output folder a/b lies inside a.png's: a.png is refused, as a name clash.
    shutil.rmtree(output / "c")
    killed_inside_atomic_path(output / "c")  # a kill while writing `c` leaves its hidden partial, which a rerun sweeps
    for _ in range(2):
        errors = {o.image.name: o.error for o in run_tile_mode(images, output, StainPredictor())}
        assert f"would hold the output of {images / 'a' / 'b.png'}" in errors["a.png"]
        assert errors["b.png"] is None and errors["c.png"] is None
        assert (output / "c" / "nuclei.parquet").is_file() and (output / "a" / "b" / "nuclei.parquet").is_file()
        assert leftovers(output) == []


def test_atomic_path_refuses_to_replace_an_unknown_folder(tmp_path):
    target = tmp_path / "folder"
    target.mkdir()
    (target / "theirs.txt").write_text("keep")
    with pytest.raises(OutputError, match="was not written by cerberus-batch"):
        with atomic_path(target) as partial:
            partial.mkdir()
            (partial / "ours.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]  # and no partial left behind
    assert (target / "theirs.txt").read_text() == "keep"


@pytest.mark.parametrize("case", ["output is the slides' folder", "output inside the model folder", "output holds the mask",
                                  "output inside the slides' folder", "output inside the masks' folder", "output holds the manifest"])
@pytest.mark.e2e
def test_run_refuses_an_output_that_overlaps_an_input(tmp_path, case):
    inputs = tmp_path / "inputs"
    (inputs / "model").mkdir(parents=True)
    slide = inputs / "slides" / "a.svs"
    slide.parent.mkdir()
    slide.write_bytes(DEMO_SLIDE.read_bytes())
    mask = inputs / "masks" / "a.png"
    mask.parent.mkdir()
    Image.fromarray(np.full((40, 60), 255, np.uint8)).save(mask)
    body = {"name": "safety", "slides": [{"path": str(slide), "id": "a", "mask": str(mask)}], "model": {"kind": "stain"}}
    if case == "output is the slides' folder":
        body["output"], named = str(slide.parent), slide
    elif case == "output inside the model folder":
        # The stain model takes no weights; a Cerberus cohort's model folder is checked the same way.
        (inputs / "model" / "settings.yml").write_text("x")
        (inputs / "model" / "weights.tar").write_bytes(b"x")
        body["model"] = {"kind": "cerberus", "weights": str(inputs / "model")}
        body["output"], named = str(inputs / "model" / "out"), inputs / "model"
    elif case == "output inside the slides' folder":  # SLIDES/out beside SLIDES/a.svs
        body["output"], named = str(slide.parent / "out"), f"lies inside the folder of slide a {slide.parent}"
    elif case == "output holds the manifest":
        (inputs / "list").mkdir()
        (inputs / "list" / "slides.csv").write_text(f"path,id,mask\n{slide},a,{mask}\n")
        body["slides"] = {"manifest": str(inputs / "list" / "slides.csv")}
        body["output"], named = str(inputs / "list"), f"contains the slide manifest {inputs / 'list' / 'slides.csv'}"
    elif case == "output inside the masks' folder":
        body["output"], named = str(mask.parent / "out"), f"lies inside the folder of the mask of slide a {mask.parent}"
    else:
        body["output"], named = str(inputs / "masks"), mask
    cohort = tmp_path / "cohort.yaml"
    cohort.write_text(yaml.safe_dump(body))
    before = tree_hashes(inputs)
    result = CliRunner().invoke(main, ["run", str(cohort), "--no-progress"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(named) in lines[0] and "output folder" in lines[0], result.output
    assert tree_hashes(inputs) == before


def killed_inside_atomic_path(target: Path) -> None:
    """A process killed (SIGKILL) while it writes `target` through `atomic_path`, as a worker can be."""
    code = (
        "import os, signal, sys\n"
        "from cerberus_batch.storage.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as partial:\n"
        "    partial.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len(leftovers(target.parent)) >= 1


def leftovers(folder: Path) -> list[str]:
    """Hidden partials and moved-aside copies of atomic writes under `folder`."""
    return sorted(str(p.relative_to(folder)) for pattern in (".*.part", ".*.old") for p in folder.rglob(pattern))


def small_cohort(folder: Path, ids: tuple[str, ...] = ("a",), size: tuple[int, int] = (800, 640)) -> Path:
    """Synthetic slides (one chunk each at this size) in `folder/slides` and a cohort file writing to `folder/out`."""
    (folder / "slides").mkdir(parents=True)
    for seed, slide_id in enumerate(ids, start=1):
        make_synthetic_slide(folder / "slides" / f"{slide_id}.svs", size=size, seed=seed)
    return write_cohort(folder, [{"path": f"slides/{i}.svs", "id": i} for i in ids],
                        processing={"chunk": 432}, cluster={"workers": 1, "dashboard_address": ":0"})


USER_FILES = {  # a user's file where a run would write, and the path the refusal names
    "report.html": "report.html",
    "summary.csv": "summary.csv",
    "masks/a.png": "masks/a.png",
    "maps/a/notes.txt": "maps/a",
    "logs/a.log": "logs/a.log",
}


@pytest.mark.e2e
@pytest.mark.parametrize("fresh", [False, True], ids=["run", "run --fresh"])
@pytest.mark.parametrize("user_file", USER_FILES)
def test_a_users_file_where_a_run_writes_is_refused_in_one_line_before_any_work(tmp_path, user_file, fresh):
    cohort = small_cohort(tmp_path)
    output = tmp_path / "out"
    (output / user_file).parent.mkdir(parents=True)
    (output / user_file).write_bytes(b"the user's own " + user_file.encode())
    before = tree_hashes(output)
    result = CliRunner().invoke(main, ["run", str(cohort), "--no-progress", *(["--fresh"] if fresh else [])])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert f"{output / USER_FILES[user_file]}: exists and was not written by cerberus-batch" in lines[0]
    assert tree_hashes(output) == before  # no slide planned, nothing written, the user's file as it was


@pytest.mark.e2e
def test_fresh_removes_only_what_we_wrote(tmp_path, cluster):
    cohort_file = small_cohort(tmp_path, ids=("a", "b"))
    output = tmp_path / "out"
    assert run_cohort(load_cohort(cohort_file), show_progress=False, cluster=cluster).status == "ok"
    # The user adds files of their own beside ours, and one where a run may write (a failed slide's log).
    user = ["notes.txt", "masks/README.txt", "logs/a.log", "maps/mine/notes.txt", "tables/nuclei/mine.txt", "plans/b.json.bak"]
    for name in user:
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_bytes(b"the user's own " + name.encode())
    ours = {p: h for p, h in tree_hashes(output).items() if p not in user}
    # The next cohort holds slide a only: a --fresh run is refused over the user's log, and removes nothing.
    body = yaml.safe_load(cohort_file.read_text())
    body["slides"] = body["slides"][:1]
    cohort_file.write_text(yaml.safe_dump(body))
    cohort = load_cohort(cohort_file)
    before = tree_hashes(output)
    with pytest.raises(OutputError, match=f"^{re.escape(str(output / 'logs' / 'a.log'))}: exists and was not written by cerberus-batch") as refused:
        run_cohort(cohort, fresh=True, show_progress=False, cluster=cluster)
    assert "\n" not in str(refused.value)
    assert tree_hashes(output) == before

    # The log moved away, --fresh recomputes a and removes what we wrote of b; every user file stays.
    (output / "logs" / "a.log").unlink()
    user.remove("logs/a.log")
    report = run_cohort(cohort, fresh=True, show_progress=False, cluster=cluster)
    assert report.status == "ok" and report.slides["a"].chunks_skipped == 0 and not report.slides["a"].tables_skipped
    after = tree_hashes(output)
    assert {name: after.get(name) for name in user} == {name: before[name] for name in user}
    layout = OutputLayout(output)
    for gone in (layout.maps("b"), layout.mask("b"), layout.plan("b"), layout.overview("b"), layout.table_folder("nuclei", "b")):
        assert str(gone.relative_to(output)) in ours and not gone.exists(), gone
    assert layout.mask("a").is_file() and layout.table_files("nuclei", "a")


@pytest.mark.e2e
def test_the_rerun_sweeps_what_a_kill_left_half_written(tmp_path, cluster):
    # Maps of 2400 processing px: levels 1 (the chunk tasks') and 2 (the pyramid task's).
    cohort = load_cohort(small_cohort(tmp_path, ids=("wide",), size=(4800, 640)))
    output = tmp_path / "out"
    layout = OutputLayout(output)
    assert run_cohort(cohort, show_progress=False, cluster=cluster).status == "ok"
    assert (layout.maps("wide") / "nuclei_prob" / "2").is_dir()
    # A worker killed while it builds the viewer levels, before the ledger records them ...
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from cerberus_batch.storage import pyramid\n"
        "pyramid.halve_into = lambda *args: os.kill(os.getpid(), signal.SIGKILL)\n"
        "pyramid.build_pyramid(Path(sys.argv[1]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(layout.maps("wide"))], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    (layout.ledger / "wide" / "pyramid.json").unlink()
    # ... and one killed while it writes the slide's mask.
    killed_inside_atomic_path(layout.mask("wide"))
    left = leftovers(output)
    assert any(name.startswith("maps/wide/") and "/.2." in name for name in left), left
    assert any(name.startswith("masks/.wide.png.") for name in left), left

    report = run_cohort(cohort, show_progress=False, cluster=cluster)
    assert report.status == "ok" and report.slides["wide"].chunks_skipped == report.slides["wide"].chunks
    assert leftovers(output) == []
    assert (layout.maps("wide") / "nuclei_prob" / "2").is_dir()


@pytest.mark.e2e
def test_an_output_of_version_0_2_resumes_its_files_being_ours(tmp_path):
    """Version 0.2 kept no list of its files, only its run.json: what lies at our paths beside it is its own."""
    cohort = small_cohort(tmp_path)
    output = tmp_path / "out"
    assert CliRunner().invoke(main, ["run", str(cohort), "--no-progress"]).exit_code == 0
    OutputLayout(output).owned.unlink()  # as version 0.2 left it
    again = CliRunner().invoke(main, ["run", str(cohort), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "1 of 1 chunks already done, tables already written" in again.output
    # Without a run.json the same files are a user's.
    OutputLayout(output).owned.unlink()
    OutputLayout(output).run_settings.unlink()
    refused = CliRunner().invoke(main, ["run", str(cohort), "--no-progress"])
    assert refused.exit_code == 1 and "exists and was not written by cerberus-batch" in refused.output
