"""A worker preload (`distributed` runs `dask_setup` in each worker process as it starts): Ctrl-C is the run's.

A terminal's Ctrl-C reaches every process of its group, local worker processes included; each would print
a KeyboardInterrupt traceback while the run, which owns them, already stops them and says so in one line.
"""

from __future__ import annotations

import signal


def dask_setup(worker) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the nanny's process runs the worker's loop on its main thread
