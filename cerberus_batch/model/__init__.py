"""The Cerberus network, the predictors that run models over slide regions, and the registry of model kinds.

The registry, options and contract import without torch (the cohort schema reads the registry's names, and
commands that run no model should not pay torch's import); the network's names load torch on first use."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from cerberus_batch.errors import CheckpointError
from cerberus_batch.model.factory import MODEL_KINDS, ModelKind, build_predictor, describe_model
from cerberus_batch.model.options import InferenceOptions
from cerberus_batch.model.predictor import ModelDescription, Predictor

if TYPE_CHECKING:
    from cerberus_batch.model.activation import class_index, class_probabilities, inst_probabilities, probabilities
    from cerberus_batch.model.cerberus import CerberusPredictor
    from cerberus_batch.model.checkpoint import load_model
    from cerberus_batch.model.network import CerberusNet

_WITH_TORCH = {
    "CerberusNet": "network",
    "CerberusPredictor": "cerberus",
    "class_index": "activation",
    "class_probabilities": "activation",
    "inst_probabilities": "activation",
    "load_model": "checkpoint",
    "probabilities": "activation",
}


def __getattr__(name: str) -> Any:
    if name not in _WITH_TORCH:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WITH_TORCH[name]}"), name)


__all__ = [
    "MODEL_KINDS",
    "CerberusNet",
    "CerberusPredictor",
    "CheckpointError",
    "InferenceOptions",
    "ModelDescription",
    "ModelKind",
    "Predictor",
    "build_predictor",
    "class_index",
    "class_probabilities",
    "describe_model",
    "inst_probabilities",
    "load_model",
    "probabilities",
]
