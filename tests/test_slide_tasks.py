"""Which tasks a slide needs (`graph.slide_tasks`), from a real plan and a real ledger, without a cluster:
a slide nothing of which is done, one with some chunks inferred, one whose maps are written but whose
tables are not, one that is done, and one without tissue."""

from __future__ import annotations

import dataclasses

import pytest

from cerberus_batch.pipeline.config import ModelSpec, ProcessingSpec, SlideEntry
from cerberus_batch.pipeline.graph import (
    BORDER, CHUNKS_PER_BORDER_TASK, INFER, INSTANCES, MERGE, OVERVIEW, PYRAMID, Ref, SlideTasks, TaskSpec, slide_tasks,
)
from cerberus_batch.pipeline.work import plan_slide_task
from cerberus_batch.storage.ledger import LEVELS_WRITTEN, MAPS_WRITTEN, TABLES_COMMITTED, Ledger
from cerberus_batch.testing.slides import make_synthetic_slide

MODEL, PROCESSING = ModelSpec(kind="stain"), ProcessingSpec(chunk=288)
TOKEN = "0123abcd"


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A synthetic slide planned into more chunks than one border task takes, over several chunk rows."""
    folder = tmp_path_factory.mktemp("graph")
    slide = SlideEntry(id="s", path=make_synthetic_slide(folder / "s.svs", size=(3000, 2400), seed=3).path)
    plan, _ = plan_slide_task(slide, MODEL, PROCESSING, folder / "out")
    assert len(plan.chunks) > CHUNKS_PER_BORDER_TASK and len({c.row for c in plan.chunks}) >= 3
    return slide, plan, folder / "out"


def tasks_for(planned, done_chunks=(), stages=()) -> SlideTasks:
    """The slide's tasks after the ledger records these chunks and stages as done."""
    slide, plan, output = planned
    ledger = Ledger(output)
    ledger.forget(slide.id)
    for index in done_chunks:
        ledger.mark_done(slide.id, index)
    for stage in stages:
        ledger.mark_slide(slide.id, stage, {})
    return slide_tasks(slide, plan, ledger.record(slide.id), model=MODEL, processing=PROCESSING, output=output, token=TOKEN)


def of(graph: SlideTasks, task: str) -> list[TaskSpec]:
    return [spec for spec in graph.tasks if spec.task == task]


def refs(value) -> list[str]:
    """The keys of the tasks an argument stands for."""
    if isinstance(value, Ref):
        return [value.key]
    return [key for v in value for key in refs(v)] if isinstance(value, list) else []


def dependencies(spec: TaskSpec) -> list[str]:
    return [key for arg in (*spec.args, *spec.kwargs.values()) for key in refs(arg)]


def assert_ordered(graph: SlideTasks) -> None:
    """Keys are unique and every task depends only on tasks listed before it (run.py submits in order)."""
    seen: set[str] = set()
    for spec in graph.tasks:
        assert set(dependencies(spec)) <= seen, spec.key
        assert spec.key not in seen
        seen.add(spec.key)


def assert_objects(graph: SlideTasks, plan, inferred: set[int]) -> None:
    """An instance task per chunk (after its inference where this run infers it), border tasks that together
    read every chunk, a merge after all of them, and the overview after the merge."""
    instances = of(graph, INSTANCES)
    assert [spec.args[1] for spec in instances] == [c.index for c in plan.chunks]
    for spec, chunk in zip(instances, plan.chunks):
        assert spec.args[2] == chunk.box and spec.args[4] == TOKEN and spec.priority > 0
        assert dependencies(spec) == ([f"infer-s-{chunk.index}"] if chunk.index in inferred else [])
    borders = of(graph, BORDER)
    rows = len({c.row for c in plan.chunks})
    assert len(borders) == min(rows, -(-len(plan.chunks) // CHUNKS_PER_BORDER_TASK)) > 1
    assert {key for spec in borders for key in dependencies(spec)} == {spec.key for spec in instances}
    (merge,) = of(graph, MERGE)
    assert dependencies(merge) == [spec.key for spec in instances] + [spec.key for spec in borders]
    (overview,) = of(graph, OVERVIEW)
    assert dependencies(overview) == [merge.key] and overview.args[0] == "s"


def test_nothing_done_infers_every_chunk_then_finds_objects_and_levels(planned):
    _, plan, _ = planned
    graph = tasks_for(planned)
    assert_ordered(graph)
    infer = of(graph, INFER)
    assert [spec.args[1] for spec in infer] == [c.index for c in plan.chunks]
    assert all(spec.retries == 2 and spec.args[2] == c.box for spec, c in zip(infer, plan.chunks))
    assert_objects(graph, plan, {c.index for c in plan.chunks})
    (pyramid,) = of(graph, PYRAMID)
    assert dependencies(pyramid) == [spec.key for spec in infer]
    assert graph.awaiting == {MAPS_WRITTEN, TABLES_COMMITTED, LEVELS_WRITTEN}
    assert (graph.chunks_skipped, graph.tables_skipped, graph.maps_written) == (0, False, False)


def test_some_chunks_done_infers_only_the_others(planned):
    _, plan, _ = planned
    done = {plan.chunks[0].index, plan.chunks[3].index}
    graph = tasks_for(planned, done, stages=[LEVELS_WRITTEN])  # an earlier run's levels are stale: maps change
    assert_ordered(graph)
    left = {c.index for c in plan.chunks} - done
    assert {spec.args[1] for spec in of(graph, INFER)} == left
    assert_objects(graph, plan, left)
    assert dependencies(of(graph, PYRAMID)[0]) == [f"infer-s-{i}" for i in sorted(left)]
    assert graph.chunks_skipped == 2 and not graph.maps_written
    assert graph.awaiting == {MAPS_WRITTEN, TABLES_COMMITTED, LEVELS_WRITTEN}


@pytest.mark.parametrize("levels", [False, True], ids=["levels missing", "levels written"])
def test_all_chunks_done_but_tables_missing_finds_objects_at_once(planned, levels):
    _, plan, _ = planned
    graph = tasks_for(planned, [c.index for c in plan.chunks], [MAPS_WRITTEN, *([LEVELS_WRITTEN] if levels else [])])
    assert_ordered(graph)
    assert not of(graph, INFER) and graph.maps_written and graph.chunks_skipped == len(plan.chunks)
    assert_objects(graph, plan, inferred=set())
    assert [dependencies(spec) for spec in of(graph, PYRAMID)] == ([] if levels else [[]])
    assert graph.awaiting == {MAPS_WRITTEN, TABLES_COMMITTED} | (set() if levels else {LEVELS_WRITTEN})


def test_a_done_slide_needs_no_task(planned):
    _, plan, _ = planned
    graph = tasks_for(planned, [c.index for c in plan.chunks], [MAPS_WRITTEN, TABLES_COMMITTED, LEVELS_WRITTEN])
    assert graph.tasks == () and graph.awaiting == {MAPS_WRITTEN}
    assert graph.maps_written and graph.tables_skipped and graph.chunks_skipped == len(plan.chunks)


def test_a_slide_without_tissue_gets_a_merge_and_its_overview(planned):
    slide, plan, output = planned
    bare = dataclasses.replace(plan, chunks=[])
    graph = slide_tasks(slide, bare, Ledger(output).record("nothing-here"), model=MODEL, processing=PROCESSING,
                        output=output, token=TOKEN)
    assert [spec.task for spec in graph.tasks] == [MERGE, OVERVIEW, PYRAMID]
    assert dependencies(graph.tasks[0]) == [] and dependencies(graph.tasks[1]) == ["merge-s"]
    assert graph.maps_written and graph.chunks_skipped == 0
