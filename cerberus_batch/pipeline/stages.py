"""Where a run's time goes: every task times its stages, and the run sums them by slide.

A task keeps a `StageClock` and runs its steps inside `clock("read")`, `clock("model")`, …; whatever it
spends outside a named stage goes to the task's own stage (its `rest`), so a task's stages add up to
its whole time. On a Dask worker the clock's seconds go to the run as an event on `TOPIC` (Dask's
structured events, `work.task_clock`: no task's result changes shape for it); the run adds them up by
slide (`StageTotals`). Two clock reads per step: cheap enough to stay on.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

TOPIC = "cerberus-batch-stages"
# The stages, in the order a slide meets them: planning (tissue mask, chunks), reading slide pixels or
# stored maps, the model (its forward passes, and loading it once per worker), turning its output into
# stored maps, finding and measuring objects, drawing the QC overview, making the maps' last viewer levels,
# writing maps (with their first levels), tables and the ledger.
STAGES = ("plan", "read", "model", "store", "postprocess", "overview", "levels", "write")


class StageClock:
    """One task's seconds by stage; `seconds()` gives the time outside any stage to `rest`."""

    def __init__(self, rest: str) -> None:
        if rest not in STAGES:
            raise ValueError(f"unknown stage {rest!r}")  # a programming error, never a user's
        self.rest = rest
        self.began = time.perf_counter()
        self._seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Time the block as `stage` (stages nest: an inner one's time is not also its outer's)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        started = time.perf_counter()
        outer = dict(self._seconds)
        try:
            yield
        finally:
            inner = sum(self._seconds.values()) - sum(outer.values())
            self._seconds[stage] += time.perf_counter() - started - inner

    def timed(self, stage: str, function):
        """`function`, each call of it timed as `stage`."""
        def call(*args, **kwargs):
            with self(stage):
                return function(*args, **kwargs)
        return call

    def seconds(self) -> dict[str, float]:
        """Seconds by stage since the clock started; they add up to the whole."""
        named = dict(self._seconds)
        named[self.rest] = named.get(self.rest, 0.0) + time.perf_counter() - self.began - sum(self._seconds.values())
        return named


class TimedReads:
    """An array whose reads (`[...]`, `windows`) a clock times as `read`; everything else is the array's."""

    def __init__(self, array: Any, clock: StageClock) -> None:
        self._array, self._clock = array, clock

    def __getitem__(self, key):
        with self._clock("read"):
            return self._array[key]

    def windows(self, keys):
        """Many windows at once (`ChunkCache.windows`), timed as one read."""
        with self._clock("read"):
            return self._array.windows(keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._array, name)


class StageTotals:
    """The run's side: seconds by stage per slide, from the tasks' events (Dask calls `add` on its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slides: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._left: set[str] = set()  # slides taken: a task of theirs that ends later (cancelled) is not counted

    def add(self, event: tuple[float, Mapping[str, Any]]) -> None:
        _, message = event
        with self._lock:
            if message["slide"] in self._left:
                return
            totals = self._slides[message["slide"]]
            for stage, seconds in message["seconds"].items():
                totals[stage] += seconds

    def take(self, slide_id: str) -> dict[str, float]:
        """A slide's seconds by stage so far, in stage order (every stage named, 0 where none was spent),
        forgotten here: a 1,000-slide cohort keeps the totals of the slides in flight only (of those that left, their ids)."""
        with self._lock:
            totals = self._slides.pop(slide_id, {})
            self._left.add(slide_id)
        return {stage: totals.get(stage, 0.0) for stage in STAGES}
