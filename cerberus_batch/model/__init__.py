"""The Cerberus network and the predictors that run models over slide regions."""

from cerberus_batch.errors import CheckpointError
from cerberus_batch.model.activation import class_index, class_probabilities, inst_probabilities, probabilities
from cerberus_batch.model.cerberus import CerberusPredictor
from cerberus_batch.model.checkpoint import load_model
from cerberus_batch.model.network import CerberusNet

__all__ = [
    "CerberusNet",
    "CerberusPredictor",
    "CheckpointError",
    "class_index",
    "class_probabilities",
    "inst_probabilities",
    "load_model",
    "probabilities",
]
