"""The libraries' voices during a run go to `OUT/run.log`, not the console.

Dask's scheduler and nannies, asyncio and tornado log every worker killed at shutdown, every TLS handshake a
port scanner breaks and every connection a Ctrl-C cuts; Python warnings come from any library. None of it is
the user's to act on, and the console keeps our own lines (one per failed slide, the progress, the outcome).
"""

from __future__ import annotations

import gc
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LIBRARIES = ("distributed", "asyncio", "tornado", "bokeh", "py.warnings")


@contextmanager
def libraries_logged_to(path: Path) -> Iterator[None]:
    """While the block runs, the libraries' records (and `warnings.warn`) go to `path` only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(name) for name in LIBRARIES]
    before = [(logger.handlers, logger.propagate) for logger in loggers]
    logging.captureWarnings(True)
    for logger in loggers:
        logger.handlers, logger.propagate = [handler], False
    try:
        yield
    finally:
        gc.collect()  # futures cut by a shutdown report their unread exceptions when collected: here, into the file
        for logger, (handlers, propagate) in zip(loggers, before):
            logger.handlers, logger.propagate = handlers, propagate
        logging.captureWarnings(False)
        handler.close()
