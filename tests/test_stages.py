"""A task's stage clock: its stages add up to the task's whole time, nested stages are not counted twice,
and the run's totals add the tasks' events up by slide."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cerberus_batch.pipeline.stages import STAGES, StageClock, StageTotals, TimedReads


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_stages_add_up_to_the_whole_and_nesting_counts_once():
    began = time.perf_counter()
    clock = StageClock("postprocess")
    with clock("read"):
        busy(0.02)
        with clock("write"):  # inside read: its time is write's, not also read's
            busy(0.03)
    busy(0.01)  # outside any stage: the task's own (`postprocess`)
    seconds = clock.seconds()
    whole = time.perf_counter() - began
    assert sum(seconds.values()) == pytest.approx(whole, abs=0.005)
    assert seconds["write"] >= 0.03 and 0.02 <= seconds["read"] < 0.03 + 0.005
    assert seconds["postprocess"] >= 0.01 and set(seconds) == {"read", "write", "postprocess"}


def test_a_stage_that_raises_still_counts():
    clock = StageClock("model")
    with pytest.raises(ZeroDivisionError), clock("read"):
        busy(0.01)
        1 / 0
    assert clock.seconds()["read"] >= 0.01


def test_unknown_stages_are_refused():
    with pytest.raises(ValueError, match="unknown stage"):
        StageClock("lunch")
    with pytest.raises(ValueError, match="unknown stage"), StageClock("read")("lunch"):
        pass


def test_timed_reads_time_each_read_and_pass_the_rest_on():
    clock = StageClock("postprocess")
    array = TimedReads(np.arange(12).reshape(3, 4), clock)
    assert array.shape == (3, 4) and array[1, 2] == 6
    assert clock.seconds()["read"] > 0


def test_totals_add_up_events_by_slide_and_forget_a_slide_once_taken():
    totals = StageTotals()
    totals.add((0.0, {"slide": "a", "seconds": {"model": 2.0, "read": 0.5}}))
    totals.add((1.0, {"slide": "a", "seconds": {"model": 1.0, "write": 0.25}}))
    totals.add((1.0, {"slide": "b", "seconds": {"plan": 3.0}}))
    a = totals.take("a")
    assert list(a) == list(STAGES)
    assert a["model"] == 3.0 and a["read"] == 0.5 and a["write"] == 0.25 and a["plan"] == 0.0
    assert totals.take("a") == dict.fromkeys(STAGES, 0.0)
    assert totals.take("b")["plan"] == 3.0


def test_a_task_that_ends_after_its_slide_left_is_not_counted_anywhere():
    totals = StageTotals()
    totals.add((0.0, {"slide": "a", "seconds": {"model": 1.0}}))
    assert totals.take("a")["model"] == 1.0
    totals.add((1.0, {"slide": "a", "seconds": {"model": 5.0}}))  # a cancelled task of the failed slide, ending late
    assert totals.take("a") == dict.fromkeys(STAGES, 0.0)


@pytest.mark.e2e
def test_every_worker_gets_ready_when_the_run_starts_not_in_its_first_task(tmp_path, cluster):
    import pyarrow as pa
    from distributed import Client

    from cerberus_batch.pipeline.run import PrepareWorker
    from cerberus_batch.testing.slides import make_synthetic_slide
    from helpers import run_ok, write_cohort

    (tmp_path / "slides").mkdir()
    make_synthetic_slide(tmp_path / "slides" / "s.svs", size=(600, 500), seed=3)
    run_ok(write_cohort(tmp_path, [{"path": "slides/s.svs", "id": "s"}], processing={"chunk": 432}), cluster)
    with Client(cluster) as client:
        setup = client.run(lambda dask_worker: (
            dask_worker.plugins[PrepareWorker.name].seconds, pa.cpu_count(), dask_worker.plugins[PrepareWorker.name].reuses_memory))
    # numba set up, pyarrow's pool one thread, as each worker has (conftest's cluster), and malloc set to reuse
    # freed arrays (tests/test_worker_memory.py), here on glibc
    assert len(setup) == 2 and all(seconds > 0 and threads == 1 and reuses for seconds, threads, reuses in setup.values())
