"""Which tasks a planned slide needs, as plain data: `slide_tasks` reads no ledger, starts no cluster.

A slide gets one inference task per kept chunk the ledger does not hold; unless its tables are committed,
an instance task per chunk, border tasks (a band of chunk rows each), a merge and the overview; unless its
maps' viewer levels are written and none of its maps is rewritten, a pyramid task. `pipeline.run` submits
them in order, each `Ref` becoming the future of the task it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cerberus_batch.pipeline.config import ModelSpec, ProcessingSpec, SlideEntry
from cerberus_batch.slides import ChunkPlan
from cerberus_batch.storage.ledger import LEVELS_WRITTEN, MAPS_WRITTEN, TABLES_COMMITTED, SlideRecord
from cerberus_batch.tasks.border import border_shares

# The tasks (`pipeline.run.TASKS` names their functions), each key "<task>-<slide>[-<index>]".
INFER, INSTANCES, BORDER, MERGE, OVERVIEW, PYRAMID = "infer", "instances", "border", "merge", "overview", "pyramid"
INFER_RETRIES = 2
# Finishing a slide's objects goes before inference waiting in the queue: a slide that finishes frees its place.
OBJECTS_FIRST = 1

# A slide's nuclei on chunk borders are finished by one task per this many chunks. Each task also decodes
# the chunk rows either side of its own, so fewer, longer tasks decode less (bench_feed's border tasks).
CHUNKS_PER_BORDER_TASK = 16
MOST_BORDER_TASKS = 16


def border_task_count(chunks: int) -> int:
    """How many border tasks a slide of `chunks` chunks gets (fewer if it has fewer chunk rows)."""
    return max(1, min(MOST_BORDER_TASKS, -(-chunks // CHUNKS_PER_BORDER_TASK)))


@dataclass(frozen=True)
class Ref:
    """Stands, in a task's arguments, for the result of the slide's task with this key."""

    key: str


@dataclass(frozen=True)
class TaskSpec:
    task: str  # INFER, INSTANCES, ...
    key: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    retries: int | None = None


@dataclass(frozen=True)
class SlideTasks:
    tasks: tuple[TaskSpec, ...]  # in submission order: a task's Refs name earlier ones
    chunks_skipped: int  # inferred by an earlier run
    tables_skipped: bool  # committed by an earlier run
    awaiting: frozenset[str]  # the ledger stages to finish before the slide is done

    @property
    def maps_written(self) -> bool:
        """No chunk is left to infer: the maps stage is done as soon as the slide is planned."""
        return not any(spec.task == INFER for spec in self.tasks)


def slide_tasks(
    slide: SlideEntry, plan: ChunkPlan, record: SlideRecord, *,
    model: ModelSpec, processing: ProcessingSpec, output: Path, token: str,
) -> SlideTasks:
    """The tasks of a planned slide given what the ledger `record`s of it, for the cohort's `model`,
    `processing` and `output`; `token` is this run's (its staged table parts are named by it)."""
    infer = {c.index: f"{INFER}-{slide.id}-{c.index}" for c in plan.chunks if c.index not in record.done_chunks}
    tasks = [
        TaskSpec(INFER, infer[c.index], (slide, c.index, c.box, c.empty_cells, model, processing, output), retries=INFER_RETRIES)
        for c in plan.chunks if c.index in infer
    ]
    awaiting = {MAPS_WRITTEN}
    if not record.tables:
        awaiting.add(TABLES_COMMITTED)
        tasks += _object_tasks(slide, plan, infer, output, token)
    # Maps this run writes get their levels anew; maps an earlier run wrote, unless it recorded their
    # levels (a replanned slide's ledger goes with its maps).
    if infer or not record.levels:
        awaiting.add(LEVELS_WRITTEN)
        # Below the object tasks' priority, so the levels never delay the objects; the slide keeps
        # its place in flight until they are written too.
        tasks.append(TaskSpec(PYRAMID, f"{PYRAMID}-{slide.id}", (slide.id, output, [Ref(k) for k in infer.values()])))
    return SlideTasks(tuple(tasks), len(plan.chunks) - len(infer), record.tables, frozenset(awaiting))


def _object_tasks(slide: SlideEntry, plan: ChunkPlan, infer: dict[int, str], output: Path, token: str) -> list[TaskSpec]:
    """An instance task per chunk, each starting as soon as its chunk's maps are written (at once for chunks
    an earlier run inferred); border tasks that finish the nuclei cut by chunk borders, a band of chunk rows
    each, as soon as the instance tasks of those rows and the rows either side are done; after all of them,
    the merge (glands, lumens, tissue, the commit) and the overview."""
    parts = [f"{INSTANCES}-{slide.id}-{c.index}" for c in plan.chunks]
    tasks = [
        TaskSpec(INSTANCES, key, (slide.id, c.index, c.box, output, token),
                 {"inferred": Ref(infer[c.index]) if c.index in infer else None}, priority=OBJECTS_FIRST)
        for key, c in zip(parts, plan.chunks)
    ]
    shares = border_shares([c.box for c in plan.chunks], border_task_count(len(plan.chunks)))
    borders = [f"{BORDER}-{slide.id}-{k}" for k in range(len(shares))]
    tasks += [
        TaskSpec(BORDER, key, (slide.id, output, token, k, share, [Ref(parts[i]) for i in share.chunks]), priority=OBJECTS_FIRST)
        for k, (key, share) in enumerate(zip(borders, shares))
    ]
    merge = f"{MERGE}-{slide.id}"
    tasks.append(TaskSpec(MERGE, merge, (slide.id, output, plan.tissue_mm2, token, [Ref(k) for k in parts], [Ref(k) for k in borders]),
                          priority=OBJECTS_FIRST))
    tasks.append(TaskSpec(OVERVIEW, f"{OVERVIEW}-{slide.id}", (slide.id, output, Ref(merge), slide.path), priority=OBJECTS_FIRST))
    return tasks
