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
        setup = client.run(lambda dask_worker: (dask_worker.plugins[PrepareWorker.name].seconds, pa.cpu_count()))
    # numba set up, and pyarrow's pool one thread, as each worker has (conftest's cluster)
    assert len(setup) == 2 and all(seconds > 0 and threads == 1 for seconds, threads in setup.values())


WARMED = '''
import sys
from numba.core.registry import CPUDispatcher
from cerberus_batch.model.factory import build_predictor
from cerberus_batch.pipeline.work import warm_up
from cerberus_batch.slides import Transform
from cerberus_batch.slides.slide import open_slide
from cerberus_batch.storage.levels import MEAN, MODE, halve
from cerberus_batch.storage.maps import map_specs
from cerberus_batch.tasks.chunk import chunk_instances
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.infer import predict_chunk, stored_maps
from cerberus_batch.tasks.kinds import SlideKinds

def compiled():
    return {f"{name}.{attr}": set(value.signatures) for name, module in list(sys.modules.items())
            if name.startswith("cerberus_batch") for attr, value in vars(module).items() if isinstance(value, CPUDispatcher)}

predictor, box = build_predictor("stain"), (0, 0, 864, 1152)
outputs = predict_chunk(open_slide(sys.argv[1]).at_mpp(0.5).read, predictor, box)
warm_up()
warmed = compiled()
specs = map_specs(predictor.heads, predictor.class_names)
stored = stored_maps(outputs, specs, [(1, 2)], (1152, 864))
for spec in specs:
    halve(stored[spec.name], MEAN if spec.probability else MODE)
found = chunk_instances(stored, box, SlideGeometry("cmu", Transform(1.0, 1.0), 0.5), SlideKinds.for_model("wsi", predictor.class_names))
used = compiled()
print(len(found.tables["nuclei"]), sorted(name for name in used if used[name]))
print(sorted(name for name in used if used[name] - warmed.get(name, set())))
'''


def test_warm_up_loads_every_compiled_function_a_real_chunk_then_calls(cmu_slide):
    """In a fresh process: after `warm_up`, a real chunk of CMU-1-Small-Region through the store, levels and
    instance steps (the stain model's maps) needs no compiled function with types it has not loaded."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WARMED, str(cmu_slide)], capture_output=True, text=True, check=True)
    *_, counted, new = done.stdout.strip().splitlines()
    nuclei, used = counted.split(" ", 1)
    assert int(nuclei) > 20 and "cerberus_batch.tasks.nuclei_record.measure" in used  # the compiled core ran on it
    assert new == "[]"
