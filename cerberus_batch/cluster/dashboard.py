"""A busy dashboard port is one line on the `cerberus_batch` logger, not distributed's 3-line UserWarning."""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any, Callable, Protocol, TypeVar

log = logging.getLogger("cerberus_batch")
BUSY = re.compile(r"Port (\d+) is already in use\.")


class SchedulerHere(Protocol):
    scheduler: Any  # the distributed.Scheduler running in this process (LocalCluster, SLURMCluster)


Cluster = TypeVar("Cluster", bound=SchedulerHere)


def start_scheduler(make: Callable[[], Cluster]) -> Cluster:
    """`make()`, which starts a scheduler in this process; says where the dashboard went if its port was busy."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # record everything; what the filters hide or raise is re-issued below
        cluster = make()
    for warning in caught:
        busy = BUSY.match(str(warning.message))
        if busy:
            # Where it is bound, not `dashboard_link`, which names the scheduler's (e.g. ib0) host.
            server = cluster.scheduler.http_server
            log.warning("Dashboard port %s is busy; serving the dashboard on %s:%s", busy[1], server.address, server.port)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return cluster
