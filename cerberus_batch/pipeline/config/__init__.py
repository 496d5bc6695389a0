"""The cohort file: what users write (`schema`), read and checked by `load_cohort` (`load`), its problems
reported one line each (`problems`), its slides listed one by one, by a glob or in a manifest (`slide_list`).

Callers import from here.
"""

from cerberus_batch.pipeline.config.load import load_cohort
from cerberus_batch.pipeline.config.schema import (
    Cohort, CohortFile, ModelSpec, ProcessingSpec, SlideEntry, microscope_mpp,
)

__all__ = ["Cohort", "CohortFile", "ModelSpec", "ProcessingSpec", "SlideEntry", "load_cohort", "microscope_mpp"]
