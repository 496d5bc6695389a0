"""`cerberus-batch run`: a cohort becomes Dask tasks, and their outcomes a report.

Each slide moves through stages: plan (tissue mask, chunks, map group) → one
inference task per kept chunk not yet in the ledger → one instance task per
chunk, started as soon as that chunk's maps are written (finishes the objects
inside it and stages them as the chunk's table part) → border tasks (the nuclei
cut by chunk borders, joined and finished, a band of chunk rows each, as soon as
those rows and their neighbours are done) → one merge task (glands and lumens
across borders, the rare nucleus longer than a band, tissue regions; commits the slide's tables) → its QC
overview. Beside them, once all its chunks are inferred, a pyramid task writes the maps' viewer levels;
the slide is done when its overview and its levels are. Slides enter the graph as others leave it.
A failure anywhere marks only that slide as failed; every other slide goes on.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections import deque
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
from distributed import Client, Future, WorkerPlugin, as_completed

from cerberus_batch.cluster.placement import placement
from cerberus_batch.errors import ClusterError, failure_line, first_line
from cerberus_batch.pipeline.config import Cohort, SlideEntry
from cerberus_batch.pipeline.graph import BORDER, INFER, INSTANCES, MERGE, OVERVIEW, PYRAMID, Ref, TaskSpec, slide_tasks
from cerberus_batch.pipeline.plan import NO_TISSUE
from cerberus_batch.pipeline.progress import RunProgress
from cerberus_batch.pipeline.records import RunRecords, RunReport, SlideOutcome, resumed
from cerberus_batch.pipeline.run_log import libraries_logged_to
from cerberus_batch.pipeline.stages import STAGES, TOPIC, StageTotals
from cerberus_batch.pipeline.work import (
    border_task, checked_predictor, chunk_instances_task, fingerprint, infer_chunk_task, merge_slide_task,
    overview_task, plan_slide_task, pyramid_task,
)
from cerberus_batch.pipeline.worker_memory import reuse_freed_memory
from cerberus_batch.quantisation import quantise
from cerberus_batch.storage.atomic import write_bytes_durably
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.ledger import LEVELS_WRITTEN, MAPS_WRITTEN, TABLES_COMMITTED, TIMED, Ledger, check_run, refuse_mismatch
from cerberus_batch.storage.output_folder import claim_output
from cerberus_batch.storage.owned import claim_run, remove_listed_file


class QuietTaskFailures(WorkerPlugin):
    """Drops the workers' log records of task failures and of the cancellations that follow
    them (a multi-line "Compute Failed" block per try): the run reports each failed slide once,
    as one line, and writes the task's traceback to `OUT/logs/<slide>.log`. A heartbeat that finds
    the scheduler gone (at shutdown, the scheduler may close before a worker) keeps its line, not its traceback."""

    name = "cerberus-batch-quiet-task-failures"

    def setup(self, worker) -> None:
        for logger in ("distributed.worker", "distributed.worker.state_machine"):
            logging.getLogger(logger).addFilter(_quieter)


class PrepareWorker(WorkerPlugin):
    """Readies a worker when it starts, once per worker process rather than in its first tasks:
    - sets up numba: its first compiled call in a process builds numba's typing and target contexts
      (about 0.35 s here), which would otherwise land in the worker's first chunk task;
    - sizes pyarrow's thread pool to the worker's threads: a Dask worker thread is one core, and pyarrow
      would otherwise start a pool of every core of the node for each table a task converts (16 threads
      per table part on a 16-core node; 4-10 ms of a 20 ms part write here);
    - has malloc reuse the megabyte arrays tasks free rather than map them afresh (`reuse_freed_memory`).
    `seconds` says how long it took; `reuses_memory` whether malloc took the setting."""

    name = "cerberus-batch-prepare-worker"
    seconds: float | None = None
    reuses_memory: bool | None = None

    def setup(self, worker) -> None:
        started = time.perf_counter()
        pa.set_cpu_count(worker.state.nthreads)
        self.reuses_memory = reuse_freed_memory()
        quantise(np.zeros(1, np.float32))  # any compiled function would do: every chunk task calls this one
        self.seconds = time.perf_counter() - started


def _quieter(record: logging.LogRecord) -> bool:
    """Whether a worker's log record is shown; a missed heartbeat is shown as one line."""
    message = str(record.msg)
    if message.startswith("Failed to communicate with scheduler during heartbeat"):
        record.exc_info, record.exc_text = None, None
        return True
    return not (message.startswith("Compute Failed") or ("Async instruction" in message and "CancelledError" in message))


def slides_in_flight(client: Client) -> int:
    """How many slides may be in the graph at once: enough that every worker thread has work while
    a slide plans or merges (2 per thread, plus one), and at least 2."""
    return max(2, 2 * sum(client.nthreads().values()) + 1)


# The function of each task `graph.slide_tasks` names.
TASKS = {INFER: infer_chunk_task, INSTANCES: chunk_instances_task, BORDER: border_task, MERGE: merge_slide_task,
         OVERVIEW: overview_task, PYRAMID: pyramid_task}


def _resolved(arg: Any, futures: dict[str, Future]) -> Any:
    """A task argument with each `Ref` (alone or in a list) replaced by the future it names."""
    if isinstance(arg, Ref):
        return futures[arg.key]
    return [_resolved(a, futures) for a in arg] if isinstance(arg, list) else arg


class CohortRun:
    """Drives one cohort on a Dask client, reacting to each finished task.

    Slides enter the graph as others leave it, at most `slides_in_flight` (looked at again whenever
    a slide is planned or finishes, as workers come and go) at a time, each with
    at most a plan, an inference and an instance task per chunk, border tasks, a merge, an overview and
    a pyramid. A finished slide leaves no futures, plan or chunk results behind, so the client's memory
    does not grow with the cohort.
    """

    def __init__(self, cohort: Cohort, client: Client, report: RunReport, progress: RunProgress, gpu: bool):
        self.cohort = cohort
        self.client = client
        self.report = report
        self.progress = progress
        self.ledger = Ledger(cohort.output)
        where = placement(gpu)
        self.infer_resources, self.cpu_resources = where.inference, where.cpu
        self.waiting = deque(cohort.slides)  # not yet in the graph
        self.pending: dict[str, set[Future]] = {}
        self.started: dict[str, float] = {}  # the slides in the graph, and when each entered
        self.awaiting: dict[str, set[str]] = {}  # per planned slide in the graph: its stages still to finish
        self.handlers: dict[str, tuple[SlideEntry, Callable[[SlideEntry, Future], None]]] = {}
        self.worked: set[str] = set()  # slides this run computed something of (chunks, tables or levels)
        self.futures = as_completed()
        self.token = uuid.uuid4().hex[:8]
        self.stages = StageTotals()
        client.subscribe_topic(TOPIC, self.stages.add)  # each task's seconds by stage
        for slide in cohort.slides:
            report.slides[slide.id] = SlideOutcome()
        self.records = RunRecords(cohort, report, self.ledger, progress.note)

    def submit(self, slide: SlideEntry, on_done: Callable[[SlideEntry, Future], None] | None, fn, *args, key: str, **kwargs) -> Future:
        """Submit a task of a slide; `on_done` runs when it finishes (None: a dependency of one that has it).

        Keys end with this run's token, so two runs sharing a scheduler never share a task
        (the dashboard still groups them as `infer-<slide>`, as Dask drops hex suffixes).
        """
        future = self.client.submit(fn, *args, key=f"{key}-{self.token}", pure=False, **kwargs)
        self.pending.setdefault(slide.id, set()).add(future)
        if on_done is not None:
            self.handlers[future.key] = (slide, on_done)
            self.futures.add(future)
        return future

    def start(self) -> None:
        self.admit()

    def admit(self) -> None:
        """Let waiting slides into the graph while there is room."""
        room = slides_in_flight(self.client)
        c = self.cohort
        while self.waiting and len(self.started) < room:
            slide = self.waiting.popleft()
            self.started[slide.id] = time.time()
            self.submit(slide, self.on_plan, plan_slide_task, slide, c.model, c.processing, c.output, key=f"plan-{slide.id}", resources=self.cpu_resources)

    def loop(self) -> None:
        for future in self.futures:
            slide, on_done = self.handlers.pop(future.key)
            outcome = self.report.slides[slide.id]
            if outcome.status != "pending":  # failed (or done) already: the rest of its tasks do not count
                pass
            elif future.status == "finished":
                try:  # whatever a slide holds, only that slide fails
                    on_done(slide, future)
                except Exception as err:  # noqa: BLE001 - reported as the slide's failure, with its traceback
                    if slide.id not in self.started:  # it had left: the failure is the run's own
                        raise
                    self.fail(slide, failure_line(err), traceback.format_exception(err))
            elif future.status == "error":
                err = future.exception()
                self.fail(slide, failure_line(err), traceback.format_exception(type(err), err, future.traceback()))
            else:  # cancelled or lost: the slide cannot finish in this run
                self.fail(slide, f"task {future.key} was {future.status}")
            # Still pending while it is handled: a slide that leaves lets go of it with the rest,
            # before the next slide enters.
            self.pending.get(slide.id, set()).discard(future)
            future.release()
            self.records.write()

    def fail(self, slide: SlideEntry, reason: str, details: list[str] | None = None) -> None:
        outcome = self.report.slides[slide.id]
        outcome.status, outcome.error = "failed", reason
        self.client.cancel(list(self.pending.get(slide.id, ())))
        log = OutputLayout(self.cohort.output).log(slide.id)
        write_bytes_durably(log, "".join([f"{slide.id} ({slide.path}) failed: {reason}\n\n", *(details or [])]).encode())
        self.progress.slide_finished(slide.id, ok=False, reason=f"{reason} (details: {log})")
        self.leave(slide)

    def leave(self, slide: SlideEntry) -> None:
        """A slide is done or failed: let go of its futures (chunk results must not pile up on the
        workers over a 1,000-slide cohort), record it, and let the next slide in."""
        self.timed(slide.id, time.time() - self.started.pop(slide.id))
        self.awaiting.pop(slide.id, None)
        for future in self.pending.pop(slide.id, ()):
            future.release()
        self.records.slide_finished(slide.id)
        self.admit()

    def timed(self, slide_id: str, seconds: float) -> None:
        """A slide's time, in all and by stage: what earlier runs recorded plus this run's where this run
        computed any of it; a rerun with nothing left to do keeps the time of the runs that did the work."""
        recorded = self.ledger.slide_stage(slide_id, TIMED)
        ran = self.stages.take(slide_id)
        if slide_id in self.worked or recorded is None:
            before = recorded or {}
            recorded = {"seconds": before.get("seconds", 0.0) + seconds,
                        "stages": {stage: round(before.get("stages", {}).get(stage, 0.0) + ran[stage], 3) for stage in STAGES}}
        if slide_id in self.worked:
            self.ledger.mark_slide(slide_id, TIMED, recorded)
        outcome = self.report.slides[slide_id]
        outcome.seconds, outcome.seconds_by_stage = recorded["seconds"], recorded.get("stages", {})

    def on_plan(self, slide: SlideEntry, future: Future) -> None:
        plan, fetches = future.result()
        outcome = self.report.slides[slide.id]
        outcome.fetched_bytes += fetches.bytes
        outcome.fetched_requests += fetches.requests
        c = self.cohort
        graph = slide_tasks(slide, plan, self.ledger.record(slide.id),
                            model=c.model, processing=c.processing, output=c.output, token=self.token)
        outcome.chunks, outcome.tissue_mm2, outcome.tissue_mpx = len(plan.chunks), plan.tissue_mm2, plan.tissue_mpx
        if not plan.chunks:
            outcome.note = NO_TISSUE
        outcome.chunks_skipped, outcome.tables_skipped = graph.chunks_skipped, graph.tables_skipped
        self.progress.add_chunks(len(plan.chunks), already=outcome.chunks_skipped)
        self.awaiting[slide.id] = set(graph.awaiting)
        self.submit_tasks(slide, graph.tasks)
        if graph.maps_written:
            self.maps_done(slide)
        self.admit()  # workers may have joined since the last look

    def submit_tasks(self, slide: SlideEntry, specs: tuple[TaskSpec, ...]) -> None:
        """Submit a slide's tasks, each `Ref` in their arguments the future of the task it names."""
        handlers = {INFER: self.on_chunk, OVERVIEW: self.on_overview, PYRAMID: self.on_pyramid}
        futures: dict[str, Future] = {}
        for spec in specs:
            resources = self.infer_resources if spec.task == INFER else self.cpu_resources
            args = [_resolved(arg, futures) for arg in spec.args]
            kwargs = {name: _resolved(arg, futures) for name, arg in spec.kwargs.items()}
            futures[spec.key] = self.submit(slide, handlers.get(spec.task), TASKS[spec.task], *args, key=spec.key,
                                            resources=resources, priority=spec.priority, retries=spec.retries, **kwargs)

    def on_chunk(self, slide: SlideEntry, future: Future) -> None:
        outcome = self.report.slides[slide.id]
        fetches = future.result()
        outcome.fetched_bytes += fetches.bytes
        outcome.fetched_requests += fetches.requests
        outcome.chunks_computed += 1
        self.worked.add(slide.id)
        self.progress.chunk_done()
        if outcome.chunks_computed + outcome.chunks_skipped == outcome.chunks:
            self.maps_done(slide)

    def maps_done(self, slide: SlideEntry) -> None:
        self.ledger.mark_slide(slide.id, MAPS_WRITTEN, {"chunks": self.report.slides[slide.id].chunks})
        self.stage_done(slide, MAPS_WRITTEN)

    def on_overview(self, slide: SlideEntry, future: Future) -> None:
        """The slide's tables are committed and its QC picture drawn: its instance stage is done."""
        self.ledger.mark_slide(slide.id, TABLES_COMMITTED, future.result())
        self.worked.add(slide.id)
        self.stage_done(slide, TABLES_COMMITTED)

    def on_pyramid(self, slide: SlideEntry, future: Future) -> None:
        """The viewer levels of the slide's maps are written and listed."""
        self.ledger.mark_slide(slide.id, LEVELS_WRITTEN, {"levels": future.result()})
        self.worked.add(slide.id)
        self.stage_done(slide, LEVELS_WRITTEN)

    def stage_done(self, slide: SlideEntry, stage: str) -> None:
        awaiting = self.awaiting[slide.id]
        awaiting.discard(stage)
        if not awaiting:
            self.slide_done(slide)

    def slide_done(self, slide: SlideEntry) -> None:
        outcome = self.report.slides[slide.id]
        outcome.status = "done"
        remove_listed_file(self.cohort.output, OutputLayout(self.cohort.output).log(slide.id))  # an earlier run's failure
        self.progress.slide_finished(slide.id, ok=True)
        if outcome.chunks_skipped or outcome.tables_skipped:
            self.progress.note(f"{slide.id}: {resumed(outcome)}")
        self.leave(slide)


def cohort_inputs(cohort: Cohort) -> dict[str, Path]:
    """Every file and folder a run reads, named as a user would: the output must stay apart from them.

    The folders holding slides and masks count too: an output among a lab's slides is one glob or
    one `rm` away from them. Those of the cohort file and its manifest do not: the output beside them is
    the usual place. Remote slides, masks and manifests cannot hold a local output and are left out.
    """
    inputs = {"cohort file": cohort.source}
    if cohort.manifest is not None and not cohort.manifest.remote:
        inputs["slide manifest"] = cohort.manifest.local
    if cohort.model.weights is not None:
        inputs["model folder"] = cohort.model.weights
    for slide in cohort.slides:
        if not slide.path.remote:
            inputs[f"slide {slide.id}"] = slide.path.local
            inputs[f"folder of slide {slide.id}"] = slide.path.local.parent
        if slide.mask is not None and not slide.mask.remote:
            inputs[f"mask of slide {slide.id}"] = slide.mask.local
            inputs[f"folder of the mask of slide {slide.id}"] = slide.mask.local.parent
    return inputs


def run_cohort(
    cohort: Cohort, *, fresh: bool = False, allow_device_change: bool = False, show_progress: bool = True, cluster=None,
) -> RunReport:
    """Run a validated cohort to the end; returns the report (also written to the output folder).

    The output folder is checked to stand apart from every input and locked against other runs,
    and every path the run writes there to be absent or ours, before anything is written to it.
    What the libraries say meanwhile goes to `OUT/run.log`.
    """
    with (claim_output(cohort.output, cohort_inputs(cohort), "cerberus-batch run") as lock,
          claim_run(cohort.output, [slide.id for slide in cohort.slides]),
          libraries_logged_to(OutputLayout(cohort.output).run_log)):
        return _run_locked(cohort, fresh, allow_device_change, show_progress, cluster, lock.taken_over)


def _run_locked(cohort: Cohort, fresh: bool, allow_device_change: bool, show_progress: bool, cluster, taken_over) -> RunReport:
    from cerberus_batch.cluster import start_cluster

    predictor = checked_predictor(cohort)
    if not fresh:  # before any cluster starts (SLURM jobs too): all but numerics the workers decide
        refuse_mismatch(cohort.output, fingerprint(cohort.model, cohort.processing, predictor, None),
                        allow_device_change=allow_device_change)
    report = RunReport(cohort=cohort.name, output=str(cohort.output))
    with ExitStack() as stack:
        try:
            if cluster is None:
                cluster, gpu = stack.enter_context(start_cluster(cohort.cluster))
            else:
                gpu = False
            client = stack.enter_context(Client(cluster))
        except (OSError, TimeoutError, RuntimeError, ClusterError) as err:  # nobody answers at the address; dask-jobqueue missing
            raise ClusterError(f"{cohort.source}: cluster: {first_line(err)}") from None
        check_run(cohort.output, fingerprint(cohort.model, cohort.processing, predictor, gpu), fresh=fresh,
                  allow_device_change=allow_device_change)
        del predictor
        client.register_plugin(QuietTaskFailures())
        client.register_plugin(PrepareWorker())
        report.dashboard = client.dashboard_link
        progress = stack.enter_context(RunProgress(len(cohort.slides), enabled=show_progress))
        if taken_over is not None:
            progress.note(f"WARNING {cohort.output}: took over the lock of a run that is gone ({taken_over.describe()})")
        progress.note(f"Dashboard: {report.dashboard}")
        run = CohortRun(cohort, client, report, progress, gpu)
        try:
            run.start()
            run.loop()
            report.status = "ok" if all(s.status == "done" for s in report.slides.values()) else "failed"
        except KeyboardInterrupt:
            report.status = "interrupted"
            client.cancel([f for futures in run.pending.values() for f in futures])
        except BaseException:  # the run itself broke (a full disk, a lost scheduler): its report must not say "running"
            report.status = "failed"
            raise
        finally:
            report.finished = time.time()
            for slide_id, began in run.started.items():  # unfinished: a replanned slide's earlier row is gone from the ledger
                run.timed(slide_id, report.finished - began)
                run.records.slide_finished(slide_id)
            run.records.write(final=True)
    return report
