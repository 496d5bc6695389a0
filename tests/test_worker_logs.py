"""What workers print: a failed task is the run's one FAILED line, a missed heartbeat one line, not a traceback."""

from __future__ import annotations

import io
import logging

from cerberus_batch.pipeline.run import QuietTaskFailures, _quieter


def test_a_heartbeat_that_finds_the_scheduler_gone_is_one_line(monkeypatch):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("distributed.worker")
    logger.addHandler(handler)
    try:
        QuietTaskFailures().setup(worker=None)
        try:
            raise ConnectionResetError("Stream is closed")  # an OSError, as distributed's CommClosedError
        except OSError:
            logger.exception("Failed to communicate with scheduler during heartbeat.")
            logger.exception("Compute Failed\nKey: infer-a-0")
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(_quieter)
    assert stream.getvalue() == "Failed to communicate with scheduler during heartbeat.\n"
