"""cerberus-batch: the Cerberus histology model over whole cohorts of whole-slide images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cerberus-batch")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
