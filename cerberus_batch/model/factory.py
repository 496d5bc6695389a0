"""The registry of model kinds: the one place a predictor is made (for `run` from the cohort file, for `tile`
from its options) or described without being made (heads, class names, identity, for planning)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from cerberus_batch.errors import SettingError
from cerberus_batch.model.options import InferenceOptions
from cerberus_batch.model.predictor import ModelDescription, Predictor

Weights = str | Path | None


@dataclass(frozen=True)
class ModelKind:
    """How a kind of model is built from its weights and options, and described from its weights and heads alone."""

    build: Callable[[Weights, Iterable[str] | None, InferenceOptions], Predictor]  # (weights, heads, options)
    describe: Callable[[Weights, Iterable[str] | None], ModelDescription]  # (weights, heads), cheap


def _build_cerberus(weights: Weights, heads: Iterable[str] | None, options: InferenceOptions) -> Predictor:
    from cerberus_batch.model.cerberus import CerberusPredictor

    return CerberusPredictor(weights, heads, options)


def _describe_cerberus(weights: Weights, heads: Iterable[str] | None) -> ModelDescription:
    from cerberus_batch.model.cerberus import describe_cerberus

    return describe_cerberus(weights, heads)


def _build_stain(weights: Weights, heads: Iterable[str] | None, options: InferenceOptions) -> Predictor:
    from cerberus_batch.model.stain import StainPredictor

    return StainPredictor()  # no weights, all heads, numpy on the CPU: heads and options do not apply


def _describe_stain(weights: Weights, heads: Iterable[str] | None) -> ModelDescription:
    from cerberus_batch.model.stain import StainPredictor

    return StainPredictor.describe()


MODEL_KINDS: dict[str, ModelKind] = {
    "cerberus": ModelKind(_build_cerberus, _describe_cerberus),
    "stain": ModelKind(_build_stain, _describe_stain),
}


def model_kind(name: str) -> ModelKind:
    """The registered kind `name`, or a one-line refusal naming the kinds there are."""
    try:
        return MODEL_KINDS[name]
    except KeyError:
        raise SettingError(f"model kind {name!r}: unknown; expected one of {', '.join(MODEL_KINDS)}") from None


def build_predictor(
    kind: str, weights: Weights = None, heads: Iterable[str] | None = None, options: InferenceOptions = InferenceOptions(),
) -> Predictor:
    """A model of `kind`; Cerberus loads `weights` (the official folder) and runs as `options` say."""
    return model_kind(kind).build(weights, heads, options)


def describe_model(kind: str, weights: Weights = None, heads: Iterable[str] | None = None) -> ModelDescription:
    """What `build_predictor(kind, weights, heads=heads)` will say of itself (kind, heads, class names, identity)."""
    return model_kind(kind).describe(weights, heads)
