"""The example cluster cohort files are valid and use their kind."""

from __future__ import annotations

import pytest
import yaml

from cerberus_batch.pipeline.config import CohortFile
from helpers import CONFIGS


@pytest.mark.parametrize("kind", ["local", "slurm", "kubernetes", "address"])
def test_example_cluster_cohorts_are_valid_and_use_their_kind(kind):
    # Their slides live on a cluster's shared storage, so only the file's structure is checked here.
    cohort = CohortFile.model_validate(yaml.safe_load((CONFIGS / f"cluster-{kind}.yaml").read_text()))
    assert cohort.cluster.kind == kind
