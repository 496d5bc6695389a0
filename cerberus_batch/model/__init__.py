"""The Cerberus network, the predictors that run models over slide regions, and the registry of model kinds."""

from cerberus_batch.errors import CheckpointError
from cerberus_batch.model.activation import class_index, class_probabilities, inst_probabilities, probabilities
from cerberus_batch.model.cerberus import CerberusPredictor
from cerberus_batch.model.checkpoint import load_model
from cerberus_batch.model.factory import MODEL_KINDS, ModelKind, build_predictor, describe_model
from cerberus_batch.model.network import CerberusNet
from cerberus_batch.model.predictor import ModelDescription, Predictor

__all__ = [
    "MODEL_KINDS",
    "CerberusNet",
    "CerberusPredictor",
    "CheckpointError",
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
