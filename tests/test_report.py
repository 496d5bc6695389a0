"""The cohort report as a person sees it: `OUT/report.html` in headless Chromium, with no network."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from cerberus_batch.cli import main
from cerberus_batch.cohort_report import COMPOSITION_TITLE, DENSITY_TITLE, NO_READOUTS, READOUTS_TITLE
from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.records import RunRecords, RunReport, SlideOutcome
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.pipeline.stages import STAGES
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.ledger import Ledger
from cerberus_batch.tasks.composition import STROMAL_LYMPHOCYTES, TUMOUR_STROMA_RATIO
from cerberus_batch.testing.slides import make_synthetic_slide
from cerberus_batch.vocabulary import STROMA, TUMOUR
from conftest import mask_file
from model_variants import model_dir_with_tumour
from test_dashboard import CHROMIUM, CHROMIUM_ARGS, PLOT_TITLES

pytestmark = pytest.mark.e2e  # every test here runs a cohort

GOOD = ("s1", "s2")
# Bokeh draws each plot on canvases inside nested shadow roots: their sizes, found through all of them.
CANVAS_SIZES = """() => {
  const found = [];
  const walk = root => root.querySelectorAll('*').forEach(node => {
    if (node.tagName === 'CANVAS') found.push([node.width, node.height]);
    if (node.shadowRoot) walk(node.shadowRoot);
  });
  walk(document);
  return found;
}"""
# The points of the readout plot as its renderer draws them: [slide, x, y] from the columns its glyph plots.
READOUT_POINTS = """() => Bokeh.documents.flatMap(doc => [...doc.all_models])
  .filter(m => m.type === 'GlyphRenderer' && m.data_source.get_column('ratio') !== null)
  .flatMap(r => {
    const column = name => Array.from(r.data_source.get_column(name));
    const xs = column(r.glyph.x.field), ys = column(r.glyph.y.field);
    return column('slide').map((slide, i) => [slide, xs[i], ys[i]]);
  })"""
NO_READOUTS_SHOWN = "() => [...document.querySelectorAll('.no-readouts')].map(d => d.innerText.trim())"


@pytest.fixture(scope="module")
def run_output(tmp_path_factory) -> Path:
    """Two small synthetic slides and one file that is not a slide, run by the stain model."""
    folder = tmp_path_factory.mktemp("report")
    for seed, slide_id in enumerate(GOOD, start=1):
        make_synthetic_slide(folder / "slides" / f"{slide_id}.svs", size=(1600, 1200), seed=seed)
    (folder / "slides" / "broken.svs").write_bytes(b"not a slide at all")
    body = {"name": "report-cohort", "output": "out",
            "slides": [{"path": f"slides/{s}.svs", "id": s} for s in (*GOOD, "broken")],
            "model": {"kind": "stain"}, "processing": {"chunk": 432}, "cluster": {"workers": 1, "dashboard_address": ":0"}}
    (folder / "cohort.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    report = run_cohort(load_cohort(folder / "cohort.yaml"), show_progress=False)
    assert [report.slides[s].status for s in (*GOOD, "broken")] == ["done", "done", "failed"]
    return folder / "out"


def without_scripts(page: str) -> str:
    """The report's markup, its inline scripts left out; there is no other script."""
    markup = re.sub(r"<script>.*?</script>", "", page, flags=re.S)
    assert "<script" not in markup and "<link" not in markup
    return markup


def test_run_writes_a_report_that_refers_to_the_pictures_beside_it(run_output):
    page = (run_output / "report.html").read_text()
    assert "Bokeh" in page and len(page) > 500_000, "Bokeh's own JavaScript is inline"
    # Nothing from the network: each QC preview is its JPEG beside the report, loaded as it scrolls into view;
    # the links go to each full-size QC picture.
    markup = without_scripts(page)
    sources = re.findall(r"""<img[^>]* src=['"]([^'"]*)""", markup)
    assert sources == [OutputLayout(run_output).overview_preview(s).relative_to(run_output).as_posix() for s in GOOD]
    assert all((run_output / src).is_file() for src in sources)
    assert markup.count("loading='lazy'") == len(GOOD) and "data:image" not in markup
    assert all("://" not in href for href in re.findall(r"""href=['"]([^'"]*)""", markup))


def test_single_file_report_embeds_the_pictures(run_output, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(run_output, copy)
    result = CliRunner().invoke(main, ["report", str(copy), "--single-file"])
    assert result.exit_code == 0, result.output
    markup = without_scripts((copy / "report.html").read_text())
    sources = re.findall(r"""<img[^>]* src=['"]([^'"]*)""", markup)
    previews = [OutputLayout(copy).overview_preview(s).read_bytes() for s in GOOD]
    assert [base64.b64decode(src.removeprefix("data:image/jpeg;base64,")) for src in sources] == previews


def test_report_command_rebuilds_the_report_from_the_records(run_output, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(run_output, copy)
    (copy / "report.html").unlink()
    result = CliRunner().invoke(main, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    assert same_but_bokeh_ids((copy / "report.html").read_text(), (run_output / "report.html").read_text())
    (copy / OutputLayout(copy).run_report.name).unlink()
    refused = CliRunner().invoke(main, ["report", str(copy)])
    assert refused.exit_code != 0 and "run_report.json" in refused.output


def same_but_bokeh_ids(a: str, b: str) -> bool:
    """Whether two reports match once the ids Bokeh gives each embedding (uuids, "p1234") are set aside."""
    ids = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\bp\d+\b"
    return re.sub(ids, "id", a) == re.sub(ids, "id", b)


def rendered(report: Path, screenshot: Path, **queries: str) -> dict:
    """What each query (a JavaScript function) returns on the report opened in headless Chromium, with no
    network; `errors` (console and page errors) and `fetched` (every URL asked for) added."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if not CHROMIUM.exists():  # a skip here, a failure under CI (tests/conftest.py)
        pytest.skip(f"Chromium is not installed at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    errors, fetched = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: fetched.append(request.url))
        page.goto(report.as_uri())
        page.wait_for_function(f"() => window.Bokeh && Bokeh.documents.length > 0 && ({CANVAS_SIZES})().length > 0", timeout=60_000)
        page.wait_for_timeout(500)  # the canvases draw a moment after the documents load
        found = {name: page.evaluate(query) for name, query in queries.items()}
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return {**found, "errors": errors, "fetched": fetched}


@pytest.mark.timeout(300)  # a hung browser should fail this test, not stall the suite
def test_report_renders_every_slide_and_plot_offline_in_chromium(run_output, tmp_path):
    found = rendered(
        run_output / "report.html", tmp_path / "report.png", titles=PLOT_TITLES, canvases=CANVAS_SIZES,
        rows="() => [...document.querySelectorAll('tr.slide')].map(r => [...r.cells].map(c => c.innerText.trim()))",
        pictures="() => [...document.querySelectorAll('img.qc')].map(i => [i.naturalWidth, i.getBoundingClientRect().width])",
        heatmaps="() => [...document.querySelectorAll('table.heatmap')].map(t => [...t.rows].map(r => [...r.cells].map(c => c.innerText.trim())))",
        readouts="() => [...document.querySelectorAll('p.readouts')].map(p => p.innerText)",
        points=READOUT_POINTS, no_points=NO_READOUTS_SHOWN,
        stages="() => [...document.querySelectorAll('table.stages tr')].map(r => [...r.cells].map(c => c.innerText.trim()))",
    )
    titles, rows, pictures, canvases = found["titles"], found["rows"], found["pictures"], found["canvases"]
    heatmaps, readouts = found["heatmaps"], found["readouts"]
    assert found["errors"] == []
    assert all(url.startswith(("file:", "data:")) for url in found["fetched"]), found["fetched"]
    assert DENSITY_TITLE in titles and COMPOSITION_TITLE in titles
    # No slide has stroma: the readout plot is words, not empty axes.
    assert READOUTS_TITLE not in titles and found["points"] == []
    assert [" ".join(said.split()) for said in found["no_points"]] == [f"{READOUTS_TITLE} {NO_READOUTS}"]
    assert any(w > 300 and h > 200 for w, h in canvases), "the plots are drawn"
    by_id = {cells[0]: cells for cells in rows}
    assert list(by_id) == ["broken", *GOOD], "failures first"
    summary = pd.read_csv(OutputLayout(run_output).summaries[1]).set_index("slide_id")
    for slide_id in GOOD:
        cells = by_id[slide_id]
        assert cells[1] == "done"
        assert cells[4] == f"{summary.loc[slide_id, 'tissue_mm2']:,.2f}"
        assert cells[5].startswith(f"{int(summary.loc[slide_id, 'nuclei_count']):,} (")
        assert cells[6] == cells[7] == "not computed", "the stain model has no gland or lumen heads"
    assert by_id["broken"][1] == "failed"
    reason = json.loads(OutputLayout(run_output).run_report.read_text())["slides"]["broken"]["error"]
    assert reason and by_id["broken"][2] == reason
    assert len(pictures) == len(GOOD) and all(natural > 0 and shown > 600 for natural, shown in pictures)
    assert (tmp_path / "report.png").stat().st_size > 50_000
    # Per slide, the class x tissue-type densities of the crossed counts; the stain model names no stroma
    # nor abnormal epithelium, so every readout shows as absent.
    crossed = pd.read_csv(OutputLayout(run_output).compositions[1])
    assert len(heatmaps) == len(GOOD)
    for slide_id, table in zip(GOOD, heatmaps):
        rows = crossed[(crossed["slide_id"] == slide_id) & crossed["per_mm2"].notna()]
        assert table[0][1:] == sorted(set(rows["tissue_name"]))
        for _, row in rows.iterrows():
            line = next(cells for cells in table[1:] if cells[0] == f"{row['kind']}: {row['class_name']}")
            assert line[1 + table[0][1:].index(row["tissue_name"])] == f"{row['per_mm2']:,.1f}"
    assert readouts == ["tumour–stroma ratio – · stromal lymphocytes – · intra-epithelial lymphocytes – · "
                        "invasive-front lymphocytes –"] * len(GOOD)
    # Where the time went: each stage's core-seconds over the timed slides, as run_report.json has them.
    slides = json.loads(OutputLayout(run_output).run_report.read_text())["slides"]
    header, *body, cpu_side = found["stages"]
    assert header == ["stage", "core-s", "share", "core-s per tissue Mpx"]
    assert [row[0] for row in body] == list(STAGES) and cpu_side[0] == "CPU side (all but model)"
    timed = [s for s, outcome in slides.items() if outcome["seconds_by_stage"]]
    for stage, row in zip(STAGES, body):
        assert row[1] == f"{sum(slides[s]['seconds_by_stage'][stage] for s in timed):,.1f}", stage
    cpu = sum(seconds for s in timed for stage, seconds in slides[s]["seconds_by_stage"].items() if stage != "model")
    assert all(slides[s]["tissue_mpx"] > 0 for s in GOOD)
    assert cpu_side[3] == f"{cpu / sum(slides[s]['tissue_mpx'] for s in timed):,.3f}"


def test_each_slide_records_its_seconds_by_stage(run_output):
    """Every task times its stages and the run adds them up per slide: each stage a done slide went through
    took time, and together they fit in the run's wall time on its one worker thread."""
    run = json.loads(OutputLayout(run_output).run_report.read_text())
    for slide_id in GOOD:
        stages = run["slides"][slide_id]["seconds_by_stage"]
        assert list(stages) == list(STAGES)
        assert all(stages[stage] > 0 for stage in ("plan", "read", "model", "store", "postprocess", "overview", "write")), stages
    total = sum(sum(run["slides"][s]["seconds_by_stage"].values()) for s in GOOD)
    assert 0 < total <= run["finished"] - run["started"]


def test_composition_adds_up_to_the_summary_and_is_ours(run_output):
    layout = OutputLayout(run_output)
    summary = pd.read_parquet(layout.summaries[0]).set_index("slide_id")
    crossed = pd.read_parquet(layout.compositions[0])
    assert set(crossed["slide_id"]) == set(GOOD)
    for slide_id in GOOD:
        rows = crossed[crossed["slide_id"] == slide_id]
        assert rows["count"].sum() == summary.loc[slide_id, "nuclei_count"] > 0
        assert set(rows["tissue_name"]) <= {"background", "tissue"}
        for _, row in rows.iterrows():
            assert row["tissue_mm2"] == pytest.approx(summary.loc[slide_id, f"tissue_{row['tissue_name']}_mm2"], rel=1e-12)
        assert summary.loc[slide_id, ["tumour_stroma_ratio", "stromal_lymphocytes_per_mm2"]].isna().all()
    owned = json.loads(layout.owned.read_text())
    assert {"composition.parquet", "composition.csv"} <= set(owned)


MASKED = {"cmu-a": (130, 100), "cmu-b": (60, 120)}  # slide id -> (row, col) of its 20 x 20 mask square at 1/10 scale


@pytest.fixture(scope="module")
def stroma_output(tmp_path_factory, cmu_slide) -> Path:
    """CMU-1-Small-Region twice, each slide a small masked square, run by a Cerberus checkpoint whose tissue
    head finds both stroma and abnormal epithelium in each square (tests/model_variants.py)."""
    folder = tmp_path_factory.mktemp("stroma")
    model = model_dir_with_tumour(folder / "model", shift=2.55)
    slides = []
    for slide_id, (row, col) in MASKED.items():
        mask = np.zeros((297, 222), np.uint8)  # the slide (2220 x 2967 px) at 1/10 scale
        mask[row:row + 20, col:col + 20] = 255
        Image.fromarray(mask).save(mask_file(folder, f"{slide_id}.png"))
        slides.append({"path": str(cmu_slide), "id": slide_id, "mask": f"masks/{slide_id}.png"})
    body = {"name": "stroma-cohort", "output": "out", "slides": slides,
            "model": {"kind": "cerberus", "weights": str(model)},
            "processing": {"chunk": 432, "tile": 432, "tissue_mask": "given"},
            "cluster": {"workers": 1, "dashboard_address": ":0"}}
    (folder / "cohort.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    report = run_cohort(load_cohort(folder / "cohort.yaml"), show_progress=False)
    assert report.status == "ok", report.slides
    return folder / "out"


@pytest.mark.timeout(600)  # the fixture runs the model on the CPU; a hung browser still fails
def test_readout_plot_shows_each_slides_summary_values(stroma_output, tmp_path):
    summary = pd.read_parquet(OutputLayout(stroma_output).summaries[0]).set_index("slide_id")
    assert (summary.loc[list(MASKED), [f"tissue_{TUMOUR}_mm2", f"tissue_{STROMA}_mm2"]] > 0).all().all()
    assert (summary.loc[list(MASKED), TUMOUR_STROMA_RATIO].between(0, 1, inclusive="neither")).all()
    assert summary.loc[list(MASKED), STROMAL_LYMPHOCYTES].notna().all()
    found = rendered(stroma_output / "report.html", tmp_path / "report.png", titles=PLOT_TITLES,
                     points=READOUT_POINTS, no_points=NO_READOUTS_SHOWN)
    assert found["errors"] == [] and READOUTS_TITLE in found["titles"] and found["no_points"] == []
    assert sorted(slide for slide, _, _ in found["points"]) == sorted(MASKED)
    for slide, ratio, density in found["points"]:
        assert ratio == pytest.approx(summary.loc[slide, TUMOUR_STROMA_RATIO], rel=1e-12)
        assert density == pytest.approx(summary.loc[slide, STROMAL_LYMPHOCYTES], rel=1e-12)


COHORT_OF_200 = 200
FAILED_EVERY = 10  # every 10th slide of the 200 failed


def cohort_of_200(run_output: Path, folder: Path) -> tuple[Path, list[str], list[str]]:
    """The records of a 200-slide run, made from the small run's: s1's outcome, summary row, crossed counts,
    maps and QC pictures under 200 ids (every 10th slide failed, as `broken` did); the ids in cohort order
    and the failed ones."""
    out = folder / "out"
    shutil.copytree(run_output, out, symlinks=True)
    layout = OutputLayout(out)
    run = json.loads(layout.run_report.read_text())
    ids = [f"r{index:03d}" for index in range(COHORT_OF_200)]
    failed = ids[::FAILED_EVERY]
    run["slides"] = {i: run["slides"]["broken" if i in failed else "s1"] for i in ids}
    layout.run_report.write_text(json.dumps(run))
    done = [i for i in ids if i not in failed]
    for table, file in ((pd.read_parquet(layout.summaries[0]), layout.summaries[0]), (pd.read_parquet(layout.compositions[0]), layout.compositions[0])):
        one = table[table["slide_id"] == "s1"]
        pd.concat([one.assign(slide_id=i) for i in done]).to_parquet(file)
    for slide_id in done:
        layout.maps(slide_id).symlink_to(layout.maps("s1").name)  # the maps' attrs: heads, class names
        for picture in (layout.overview(slide_id), layout.overview_preview(slide_id)):
            shutil.copyfile(picture.with_stem("s1"), picture)
    return out, ids, failed


@pytest.mark.timeout(300)
def test_a_200_slide_report_is_small_lists_failures_first_and_shows_every_slide(run_output, tmp_path):
    out, ids, failed = cohort_of_200(run_output, tmp_path)
    layout = OutputLayout(out)
    sizes = {}
    for form, flags in (("single-file", ["--single-file"]), ("by reference", [])):  # the by-reference one is opened below
        result = CliRunner().invoke(main, ["report", str(out), *flags])
        assert result.exit_code == 0, result.output
        sizes[form] = layout.report.stat().st_size
    previews = sum(layout.overview_preview(i).stat().st_size for i in ids if i not in failed)
    print(f"report of {len(ids)} slides: {sizes['by reference']:,} bytes by reference, {sizes['single-file']:,} bytes "
          f"as a single file ({previews:,} bytes of QC previews beside it)")
    # The single file holds the previews in base64 (4 bytes per 3); the one by reference only their names.
    assert sizes["single-file"] - sizes["by reference"] >= 4 / 3 * previews * 0.99
    three = (run_output / "report.html").stat().st_size  # the 3-slide report: Bokeh's JavaScript and the plots
    assert (sizes["by reference"] - three) / (len(ids) - 3) < 8_000, "a few KB of markup per slide"
    found = rendered(
        layout.report, tmp_path / "report.png",
        rows="() => [...document.querySelectorAll('tr.slide')].map(r => [r.cells[0].innerText.trim(), r.cells[1].innerText.trim()])",
        pictures="() => [...document.querySelectorAll('img.qc')].map(i => i.getAttribute('src'))",
        last="""async () => {
            const pictures = [...document.querySelectorAll('img.qc')], last = pictures[pictures.length - 1];
            last.scrollIntoView();
            await new Promise(done => last.complete && last.naturalWidth ? done() : last.addEventListener('load', done));
            return last.naturalWidth;
        }""",
    )
    assert found["errors"] == []
    rows = found["rows"]
    assert [slide for slide, _ in rows] == failed + [i for i in ids if i not in failed], "every slide, failures first"
    assert [status for _, status in rows] == ["failed"] * len(failed) + ["done"] * (len(ids) - len(failed))
    done = [i for i in ids if i not in failed]
    assert found["pictures"] == [layout.overview_preview(i).relative_to(out).as_posix() for i in done]
    assert found["last"] == Image.open(layout.overview_preview(done[-1])).width, "the last picture loads when scrolled to"


def test_report_is_redrawn_when_a_slide_finishes_not_as_each_chunk_does(run_output, tmp_path):
    """`run_report.json` follows the chunks; the summary and the report, which show only finished slides,
    are rewritten once one finishes (and at the end)."""
    output = tmp_path / "out"
    shutil.copytree(run_output, output)
    cohort = load_cohort(run_output.parent / "cohort.yaml").model_copy(update={"output": output})
    layout = OutputLayout(output)
    report = RunReport(cohort.name, str(output), slides={s.id: SlideOutcome() for s in cohort.slides})
    records = RunRecords(cohort, report, Ledger(output), note=pytest.fail)
    written = lambda: {path.name: path.stat().st_ino for path in (layout.run_report, layout.summaries[0], output / "report.html")}  # noqa: E731
    records.write()
    first = written()
    report.slides["s1"].chunks_computed = 3
    records.due = 0.0  # REPORT_EVERY has passed
    records.write()
    after_chunks = written()
    assert json.loads(layout.run_report.read_text())["slides"]["s1"]["chunks_computed"] == 3
    assert after_chunks[layout.run_report.name] != first[layout.run_report.name]
    assert {k: v for k, v in after_chunks.items() if k != layout.run_report.name} == \
        {k: v for k, v in first.items() if k != layout.run_report.name}
    records.slide_finished("s1")
    records.due = 0.0
    records.write()
    finished = written()
    assert all(ino != after_chunks[name] for name, ino in finished.items())  # every one rewritten
    records.write(final=True)  # at the end, though no slide finished since
    assert all(ino != finished[name] for name, ino in written().items())
