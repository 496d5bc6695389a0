"""The cohort report `OUT/report.html`: a static page that opens with no server and no network.

Built only from what a run writes: `run_report.json` (each slide's status, failure reason and time),
the cohort summary (counts per class, tissue area by type, readouts), the crossed counts (objects per
tissue type), each slide's QC picture and its maps' record of the heads that ran. Failed slides come first.
Bokeh's own JavaScript (`bokeh.resources`' inline mode), the plots and the styles are inline; each slide's
QC preview is a relative reference to its JPEG beside the report (`tables/overview/`), loaded as it scrolls
into view, so a 1,000-slide report stays small and opens at once. The single-file form embeds the previews
(base64), for a report that travels alone.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pandas as pd
from bokeh.embed import components
from bokeh.models import ColumnDataSource, Legend, NumeralTickFormatter
from bokeh.plotting import figure
from bokeh.resources import Resources

from cerberus_batch.errors import OutputError
from cerberus_batch.pipeline.stages import STAGES
from cerberus_batch.storage.atomic import atomic_path
from cerberus_batch.storage.colours import tissue_colours
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.owned import claim_files
from cerberus_batch.storage.summary import summary_class_counts
from cerberus_batch.tasks.composition import (
    FRONT_LYMPHOCYTES, INTRAEPITHELIAL_LYMPHOCYTES, STROMAL_LYMPHOCYTES, TUMOUR_STROMA_RATIO,
)
from cerberus_batch.storage.zarr_maps import open_slide_maps
from cerberus_batch.vocabulary import NUCLEI, OBJECTS, TISSUE, class_names, computed

# Bokeh's JavaScript, inline; the plots need its core only (not its widgets, tables, WebGL or MathJax: 2.7 MB more).
BOKEH = Resources(mode="inline", components=["bokeh"])
DENSITY_TITLE = "Nuclei density per slide (nuclei per mm² of tissue)"
COMPOSITION_TITLE = "Tissue composition across slides (share of tissue area)"
READOUTS_TITLE = "Stromal lymphocyte density against tumour–stroma ratio"
STATUS_ORDER = ("failed", "pending", "done")  # the report's slides in this order: what needs a look first
NO_READOUTS = "No slide to plot: the stromal lymphocyte density needs stroma, and no slide's tissue-type map has any."
SHOWN_READOUTS = {  # summary column -> how the report names it, and its format
    TUMOUR_STROMA_RATIO: ("tumour–stroma ratio", "{:.2f}"),
    STROMAL_LYMPHOCYTES: ("stromal lymphocytes", "{:,.1f}/mm²"),
    INTRAEPITHELIAL_LYMPHOCYTES: ("intra-epithelial lymphocytes", "{:,.1f}/mm²"),
    FRONT_LYMPHOCYTES: ("invasive-front lymphocytes", "{:,.1f}/mm²"),
}


class CohortReport:
    """A cohort's `OUT/report.html`, rewritten whole (`write`) as slides finish, from the run's records
    and each slide's preview (made beside its QC picture)."""

    def __init__(self, output: str | Path, single_file: bool = False) -> None:
        self.layout = OutputLayout(output)
        self.single_file = single_file  # the QC previews embedded, not referenced
        self.claimed = False  # listed as ours (`storage.owned`), checked once: a run rewrites it often

    @property
    def path(self) -> Path:
        return self.layout.report

    def write(self) -> Path:
        """(Re)write the report from the run's records; it appears whole or not at all. A user's
        `report.html` there is refused (OutputError), never replaced."""
        layout = self.layout
        if not layout.run_report.is_file():
            raise OutputError(f"{layout.root}: no {layout.run_report.name} (has a run started here?)")
        if not self.claimed:
            claim_files(layout.root, [self.path])
            self.claimed = True
        run = json.loads(layout.run_report.read_text())
        summary_file = layout.summaries[0]
        summary = pd.read_parquet(summary_file).set_index("slide_id") if summary_file.is_file() else pd.DataFrame()
        crossed_file = layout.compositions[0]
        crossed = pd.read_parquet(crossed_file) if crossed_file.is_file() else pd.DataFrame(columns=["slide_id"])
        # Split once, not filtered per slide: a 1,000-slide cohort's report is rewritten while it runs.
        by_slide = {slide_id: rows for slide_id, rows in crossed.groupby("slide_id", sort=False)}
        slides = [_slide(layout, slide_id, outcome, summary, by_slide.get(slide_id, crossed.iloc[:0]))
                  for slide_id, outcome in run["slides"].items()]
        with atomic_path(self.path) as partial, open(partial, "w", encoding="utf-8") as page:
            page.writelines(_page(run, slides, layout, self.single_file))
        return self.path


def _preview(layout: OutputLayout, slide_id: str, embedded: bool) -> str | None:
    """The slide's JPEG preview as the report's `src`: a data URI, or its path relative to the report;
    None when there is none yet."""
    path = layout.overview_preview(slide_id)
    if not embedded:
        return quote(path.relative_to(layout.root).as_posix()) if path.is_file() else None  # ids may hold "#", "?"
    try:
        return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
    except FileNotFoundError:
        return None


def _slide(
    layout: OutputLayout, slide_id: str, outcome: dict[str, Any], summary: pd.DataFrame, crossed: pd.DataFrame,
) -> dict[str, Any]:
    """What the report shows of one slide: its outcome, its summary row (if its tables exist), its crossed
    counts, and the heads and tissue classes of the model that made its maps."""
    row = summary.loc[slide_id].to_dict() if slide_id in summary.index else None
    try:
        attrs = dict(open_slide_maps(layout.maps(slide_id)).attrs)
    except (FileNotFoundError, ValueError):  # never planned
        attrs = {}
    return {"id": slide_id, "outcome": outcome, "row": row, "attrs": attrs, "crossed": crossed}


def _tissue_names(slides: list[dict[str, Any]]) -> list[str]:
    """Tissue classes in the models' order, every slide's, each once."""
    names: dict[str, None] = {}
    for slide in slides:
        if slide["attrs"] and computed(TISSUE, slide["attrs"].get("heads", ())):
            names.update(dict.fromkeys(class_names(TISSUE, slide["attrs"]["class_names"])))
    return list(names) or list(TISSUE.classes)


def _composition(row: dict[str, Any] | None, names: list[str]) -> list[float]:
    """Share of the slide's tissue area per tissue class (zeros when nothing was measured)."""
    areas = [float(row.get(f"tissue_{name}_mm2", 0.0)) if row else 0.0 for name in names]
    total = sum(areas)
    return [area / total if total else 0.0 for area in areas]


def _plots(slides: list[dict[str, Any]], names: list[str]) -> tuple[str, dict[str, str]]:
    """The cohort plots, as Bokeh's script and one div per plot."""
    done = [s for s in slides if s["row"] is not None]
    ids = [s["id"] for s in done]
    height = max(260, 28 * len(ids) + 90)
    density = figure(title=DENSITY_TITLE, y_range=ids[::-1], height=height, width=640, toolbar_location=None,
                     x_axis_label="nuclei / mm²")
    per_mm2 = [_number(s["row"].get(f"{NUCLEI.name}_per_mm2")) for s in done]  # NaN: not computed, no bar
    density.hbar(y="slide", right="density", height=0.7, color="#5a3d8a",
                 source=ColumnDataSource({"slide": ids, "density": per_mm2}))
    density.x_range.start = 0
    shares = list(zip(*(_composition(s["row"], names) for s in done))) or [()] * len(names)
    composition = figure(title=COMPOSITION_TITLE, y_range=ids[::-1], height=height + 60, width=640, toolbar_location=None,
                         x_axis_label="share of tissue area")
    bars = composition.hbar_stack(names, y="slide", height=0.7, line_color="white",
                                  source=ColumnDataSource({"slide": ids, **dict(zip(names, map(list, shares)))}),
                                  color=[_hex(c) for c in tissue_colours(names)])
    composition.add_layout(Legend(items=[(name, [bar]) for name, bar in zip(names, bars)], orientation="horizontal"), "below")
    composition.x_range.start, composition.x_range.end = 0, 1
    composition.xaxis.formatter = NumeralTickFormatter(format="0%")
    points = [(s["id"], s["row"].get(TUMOUR_STROMA_RATIO), s["row"].get(STROMAL_LYMPHOCYTES)) for s in done]
    points = [p for p in points if not (pd.isna(p[1]) or pd.isna(p[2]))]
    plots = {"density": density, "composition": composition}
    if points:
        plots["readouts"] = _readout_plot(points)
    script, divs = components(plots)
    # Empty axes would read as "no lymphocytes"; say why there is nothing to plot instead.
    divs.setdefault("readouts", f"<div class='no-readouts'><b>{READOUTS_TITLE}</b><p>{NO_READOUTS}</p></div>")
    return script, divs


def _readout_plot(points: list[tuple[str, float, float]]):
    """One point per (slide, tumour–stroma ratio, stromal lymphocyte density)."""
    # A little room past 0 and 1 (no abnormal epithelium) and past 0 lymphocytes, so no point is cut in half.
    top = max(max(p[2] for p in points), 1.0)
    plot = figure(title=READOUTS_TITLE, height=360, width=640, toolbar_location=None, x_range=(-0.03, 1.03),
                  y_range=(-0.03 * top, 1.08 * top),
                  x_axis_label="tumour–stroma ratio (stroma / (stroma + abnormal epithelium) area)",
                  y_axis_label="lymphocytes + plasma cells / mm² of stroma",
                  tooltips=[("slide", "@slide"), ("ratio", "@ratio{0.00}"), ("density", "@density{0.0}")])
    ids, ratio, density = (list(v) for v in zip(*points))
    plot.scatter(x="ratio", y="density", size=9, color="#5a3d8a", source=ColumnDataSource(
        {"slide": ids, "ratio": ratio, "density": density}))
    return plot


def _heatmap(slide: dict[str, Any]) -> str:
    """The slide's objects per mm² of each tissue type, one row per kind and class, shaded by density."""
    crossed = slide["crossed"]
    known = crossed[crossed["per_mm2"].notna()] if len(crossed) else crossed
    if not len(known):
        return "<span class='muted'>no objects in typed tissue</span>"
    table = known.pivot_table(index=["kind", "class_name"], columns="tissue_name", values="per_mm2", aggfunc="sum")
    top = float(table.max().max()) or 1.0
    head = "".join(f"<th>{html.escape(str(t))}</th>" for t in table.columns)
    rows = []
    for (kind, name), values in table.iterrows():
        cells = "".join(
            "<td class='muted'>–</td>" if pd.isna(v) else
            f"<td style='background:rgba(90,61,138,{0.08 + 0.8 * v / top:.2f});color:{'white' if v / top > 0.5 else '#222'}'>{v:,.1f}</td>"
            for v in values)
        rows.append(f"<tr><th>{html.escape(str(kind))}: {html.escape(str(name))}</th>{cells}</tr>")
    return f"<table class='heatmap'><caption>objects per mm² of tissue type</caption><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _readouts(row: dict[str, Any] | None) -> str:
    """The slide's named readouts in words; a readout whose tissue is absent shows as –."""
    if row is None:
        return ""
    said = [f"{label} {'–' if pd.isna(row.get(column)) else shape.format(float(row[column]))}"
            for column, (label, shape) in SHOWN_READOUTS.items()]
    return f"<p class='readouts'>{' · '.join(said)}</p>"


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _seconds(value: float | None) -> str:
    """A slide's computing time; "–" for one no run has timed yet."""
    return "–" if value is None else f"{float(value):,.1f} s"


def _time_spent(slides: list[dict[str, Any]]) -> str:
    """Where the cohort's computing time went: each stage's core-seconds, share, and core-seconds per tissue
    megapixel (processing px of the cells holding tissue), over the slides that recorded their stages;
    then the CPU side (every stage but the model's forward pass), what a GPU node's cores must keep up with."""
    timed = [s for s in slides if s["outcome"].get("seconds_by_stage")]
    if not timed:
        return ""
    stages = {stage: sum(s["outcome"]["seconds_by_stage"].get(stage, 0.0) for s in timed) for stage in STAGES}
    total = sum(stages.values()) or 1.0
    tissue_mpx = sum(float(s["outcome"].get("tissue_mpx", 0.0)) for s in timed)
    per = (lambda seconds: f"{seconds / tissue_mpx:,.3f}") if tissue_mpx else (lambda seconds: "–")
    rows = "".join(f"<tr><th>{stage}</th><td>{seconds:,.1f}</td><td>{seconds / total:.1%}</td><td>{per(seconds)}</td></tr>"
                   for stage, seconds in stages.items())
    cpu = total - stages["model"]
    return (f"<h2>Where the time went</h2><table class='stages'><tr><th>stage</th><th>core-s</th><th>share</th>"
            f"<th>core-s per tissue Mpx</th></tr>{rows}<tr><th>CPU side (all but model)</th><td>{cpu:,.1f}</td>"
            f"<td>{cpu / total:.1%}</td><td>{per(cpu)}</td></tr></table>"
            f"<p class='muted'>{len(timed)} slides, {tissue_mpx:,.1f} tissue Mpx.</p>")


def _hex(colour: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % colour


def _counts(slide: dict[str, Any]) -> str:
    """Counts and densities per class of each object kind, or why there are none."""
    row, attrs = slide["row"], slide["attrs"]
    cells = []
    for kind in OBJECTS:
        if attrs and not computed(kind, attrs.get("heads", ())):
            cells.append("<td class='muted'>not computed</td>")
            continue
        if row is None:
            cells.append("<td class='muted'>–</td>")
            continue
        mm2 = float(row.get("tissue_mm2", 0.0))
        count, per_mm2 = row.get(f"{kind.name}_count"), row.get(f"{kind.name}_per_mm2")
        if count is None:  # a row that says the model did not find this kind
            cells.append("<td class='muted'>–</td>")
            continue
        lines = [f"<b>{int(count):,}</b> ({float(per_mm2 or 0.0):,.1f}/mm²)"]
        for name, value in summary_class_counts(row, kind.name, class_names(kind, attrs.get("class_names", {}))).items():
            if value:
                density = f"{value / mm2:,.1f}/mm²" if mm2 else "–"
                lines.append(f"{html.escape(name)} {value:,} ({density})")
        cells.append(f"<td>{'<br>'.join(lines)}</td>")
    return "".join(cells)


def _bar(shares: list[float], names: list[str]) -> str:
    """A slide's tissue composition as one horizontal bar of coloured segments."""
    if not any(shares):
        return "<span class='muted'>–</span>"
    segments = "".join(
        f"<span style='width:{100 * share:.2f}%;background:{_hex(colour)}' title='{html.escape(name)} {100 * share:.1f}%'></span>"
        for share, name, colour in zip(shares, names, tissue_colours(names)) if share
    )
    return f"<div class='bar'>{segments}</div>"


def _page(run: dict[str, Any], slides: list[dict[str, Any]], layout: OutputLayout, embedded: bool) -> Iterator[str]:
    """The page in pieces, a slide's row (with its picture) at a time: the pictures of a 1,000-slide
    cohort never sit in memory together. Failed slides first, then those not finished, then the rest,
    each group in the cohort's order."""
    names = _tissue_names(slides)
    script, divs = _plots(slides, names)
    statuses = [s["outcome"]["status"] for s in slides]
    said = ", ".join(f"{statuses.count(k)} {k}" for k in ("done", "failed", "pending") if statuses.count(k))
    legend = "".join(f"<span class='key'><span style='background:{_hex(c)}'></span>{html.escape(n)}</span>"
                     for n, c in zip(names, tissue_colours(names)))
    title = html.escape(f"{run['cohort']}: cohort report")
    yield f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
{BOKEH.render()}
<style>{STYLE}</style>
</head><body>
<h1>{title}</h1>
<p>Run {html.escape(run['status'])}: {len(slides)} slides ({said}). Output: <code>{html.escape(run['output'])}</code>.</p>
<div class="plots">{divs['density']}{divs['composition']}{divs['readouts']}</div>
{_time_spent(slides)}
<h2>Slides</h2>
<p class="muted">Tissue composition: {legend}</p>
<table><thead><tr><th>slide</th><th>status</th><th>reason</th><th>time</th><th>tissue mm²</th>
{''.join(f'<th>{k.name}</th>' for k in OBJECTS)}<th>tissue composition</th></tr></thead>
<tbody>"""
    for slide in sorted(slides, key=lambda s: STATUS_ORDER.index(s["outcome"]["status"])):
        outcome, row = slide["outcome"], slide["row"]
        reason = outcome.get("error") or outcome.get("note") or ""
        picture = _preview(layout, slide["id"], embedded)
        relative = quote(layout.overview(slide["id"]).relative_to(layout.root).as_posix())
        shown = (f"<a href='{html.escape(relative)}'><img class='qc' loading='lazy' alt='QC picture of {html.escape(slide['id'])}' "
                 f"src='{html.escape(picture)}'></a>" if picture else "<span class='muted'>no QC picture</span>")
        tissue = float(row["tissue_mm2"]) if row else float(outcome.get("tissue_mm2", 0.0))
        yield (
            f"<tr class='slide' id='slide-{html.escape(slide['id'])}'><td><b>{html.escape(slide['id'])}</b></td>"
            f"<td><span class='status {outcome['status']}'>{outcome['status']}</span></td>"
            f"<td class='reason'>{html.escape(reason)}</td><td>{_seconds(outcome.get('seconds'))}</td>"
            f"<td>{tissue:,.2f}</td>{_counts(slide)}<td class='composition'>{_bar(_composition(row, names), names)}</td></tr>"
            f"<tr class='picture'><td colspan='9'>{_readouts(row)}<div class='crossed'>{_heatmap(slide) if row else ''}"
            f"{shown}</div></td></tr>"
        )
    yield f"""</tbody></table>
{script}
</body></html>
"""


STYLE = """
body { font-family: sans-serif; font-size: 15px; margin: 24px; color: #222; }
h1 { font-size: 24px; } h2 { font-size: 19px; margin-top: 28px; }
.plots { display: flex; flex-wrap: wrap; gap: 24px; }
table { border-collapse: collapse; } th, td { padding: 6px 10px; text-align: left; vertical-align: top; }
th { border-bottom: 2px solid #888; } tr.picture td { border-bottom: 1px solid #ccc; padding-bottom: 14px; }
.muted { color: #777; } .reason { max-width: 360px; color: #a00; }
.status { padding: 2px 8px; border-radius: 4px; color: white; background: #888; }
.status.done { background: #2e7d32; } .status.failed { background: #c62828; }
.bar { display: flex; width: 220px; height: 16px; border: 1px solid #999; }
.bar span { display: block; height: 100%; }
.key { margin-right: 12px; white-space: nowrap; }
.key span { display: inline-block; width: 12px; height: 12px; margin-right: 4px; border: 1px solid #999; vertical-align: middle; }
img.qc { max-width: 100%; width: 960px; height: auto; border: 1px solid #ccc; }
.crossed { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.no-readouts { width: 640px; padding: 8px 12px; } .no-readouts p { color: #555; }
table.stages td { text-align: right; }
table.heatmap td { text-align: right; font-size: 13px; } table.heatmap caption { text-align: left; color: #555; }
"""
