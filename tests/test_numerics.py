"""Numerics never mix: the run records how its maps were computed, and a resume computing them
another way is refused unless --allow-device-change is given."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from cerberus_batch.cli import main
from cerberus_batch.model.predictor import numerics
from cerberus_batch.pipeline.config import ModelSpec, ProcessingSpec
from cerberus_batch.pipeline.work import fingerprint
from helpers import small_cohort

pytestmark = pytest.mark.e2e  # each runs a cohort


class Named:
    """The two things a fingerprint reads from a predictor."""

    identity, heads = "abc", ("Nuclei-INST",)

    def __init__(self, kind: str):
        self.kind = kind


def test_numerics_name_device_kind_and_precision():
    assert numerics("cerberus", "cpu", None) == "cpu-fp32"
    assert numerics("cerberus", "cpu", "bf16") == "cpu-bf16"
    assert numerics("cerberus", "cuda", "fp16") == "cuda-fp16"
    # The predictor switches TF32 off on CUDA, whatever the process-wide default says.
    for allowed in (False, True):  # ends at PyTorch's default
        torch.backends.cudnn.allow_tf32 = allowed
        assert numerics("cerberus", "cuda", None) == "cuda-fp32"
    assert numerics("stain", "cuda", None) == "cpu-fp32"  # numpy, whatever the workers have


def test_fingerprint_takes_the_device_the_workers_will_use():
    processing = ProcessingSpec()
    cerberus = Named("cerberus")
    assert fingerprint(ModelSpec(), processing, cerberus, gpu_workers=False)["numerics"] == "cpu-fp32"
    assert fingerprint(ModelSpec(amp="bf16"), processing, cerberus, gpu_workers=True)["numerics"] == "cuda-bf16"
    assert fingerprint(ModelSpec(device="cpu"), processing, cerberus, gpu_workers=True)["numerics"] == "cpu-fp32"
    assert fingerprint(ModelSpec(device="cuda:1", amp="fp16"), processing, cerberus, gpu_workers=False)["numerics"] == "cuda-fp16"


def test_a_resume_with_other_numerics_is_refused_unless_allowed(tmp_path):
    cohort = small_cohort(tmp_path, {"kind": "local", "workers": 1, "dashboard_address": ":0"})
    first = CliRunner().invoke(main, ["run", str(cohort), "--no-progress"])
    assert first.exit_code == 0, first.output
    run_json = tmp_path / "out" / "run.json"
    recorded = json.loads(run_json.read_text())
    assert recorded["numerics"] == "cpu-fp32"
    # As if the maps had been made on a GPU with bf16 autocast.
    run_json.write_text(json.dumps({**recorded, "numerics": "cuda-bf16"}))
    refused = CliRunner().invoke(main, ["run", str(cohort), "--no-progress"])
    assert refused.exit_code == 1
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and "cuda-bf16" in lines[0] and "cpu-fp32" in lines[0] and "--allow-device-change" in lines[0]
    allowed = CliRunner().invoke(main, ["run", str(cohort), "--no-progress", "--allow-device-change"])
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(run_json.read_text())["numerics"] == "cpu-fp32"
