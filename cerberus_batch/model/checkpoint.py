"""Load a released Cerberus model directory (`weights.tar` + `settings.yml`) into a ready network."""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import yaml

from cerberus_batch.errors import CheckpointError
from cerberus_batch.model.integrity import verify_weights
from cerberus_batch.model.naming import RELEASED_TASKS, considered_decoders, output_classes, resolve_decoders
from cerberus_batch.model.network import CerberusNet
from cerberus_batch.vocabulary import head_outputs

WEIGHTS = "weights.tar"
SETTINGS = "settings.yml"
_SHOWN = 3  # keys listed in a missing/unexpected-keys message
# The class a weights_only load refused; torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y".
_REFUSED_GLOBAL = re.compile(r"\bglobal\s+(\w+(?:\.\w+)+)", re.IGNORECASE)


class _SettingsLoader(yaml.SafeLoader):
    """Safe YAML that reads Python-tagged values (e.g. tuples in training-only fields) as plain data."""


def _plain(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_SettingsLoader.add_multi_constructor("tag:yaml.org,2002:python/", _plain)


def model_files(model_dir: str | Path) -> tuple[Path, Path]:
    """(weights.tar, settings.yml) of a model directory, checked to exist."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: model directory not found")
    for name in (WEIGHTS, SETTINGS):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name}: missing (a model directory holds {WEIGHTS} and {SETTINGS})")
    return directory / WEIGHTS, directory / SETTINGS


def read_model_kwargs(path: Path) -> dict[str, Any]:
    """`model_kwargs` of a settings.yml, with the fields the network needs checked."""
    try:
        settings = yaml.load(path.read_text(), Loader=_SettingsLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())
        raise CheckpointError(f"{path}: not valid YAML ({reason})") from None
    kwargs = settings.get("model_kwargs") if isinstance(settings, dict) else None
    if not isinstance(kwargs, dict) or not isinstance(kwargs.get("decoder_kwargs"), dict):
        raise CheckpointError(f"{path}: no model_kwargs.decoder_kwargs mapping")
    backbone = kwargs.get("encoder_backbone_name", "resnet34")
    if backbone != "resnet34":
        raise CheckpointError(f"{path}: model_kwargs.encoder_backbone_name {backbone!r} unsupported (only resnet34)")
    unknown = [t for t in kwargs.get("considered_tasks") or () if t not in kwargs["decoder_kwargs"]]
    if unknown:
        raise CheckpointError(f"{path}: model_kwargs.considered_tasks {unknown} not in decoder_kwargs")
    return kwargs


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict under `desc`, without a DataParallel `module.` prefix (only if every key has it)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused:
            raise CheckpointError(
                f"{path}: holds pickled Python objects ({refused[1]}), refused by weights_only loading"
            ) from None
        raise CheckpointError(f"{path}: not a torch checkpoint") from None
    except Exception:  # garbage bytes surface as whatever the unpickler trips over (IndexError, EOFError, ...)
        raise CheckpointError(f"{path}: not a torch checkpoint") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("desc"), Mapping):
        raise CheckpointError(f"{path}: no 'desc' state dict")
    state = dict(checkpoint["desc"])
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


@dataclass(frozen=True)
class ModelFolder:
    """What a model directory's settings say, checked: its decoders ({decoder: {head: classes}}) and those that run."""

    weights: Path
    settings: Path
    decoders: dict[str, dict[str, int]]
    running: tuple[str, ...]

    @property
    def output_classes(self) -> dict[str, int]:
        return output_classes(self.decoders, self.running)


def read_model_folder(model_dir: str | Path, heads: Iterable[str] | None = None) -> ModelFolder:
    """A model directory's files and settings, with `heads` resolved (see `load_model`), without its weights."""
    weights, settings = model_files(model_dir)
    kwargs = read_model_kwargs(settings)
    decoders = considered_decoders(kwargs["decoder_kwargs"], kwargs.get("considered_tasks") or RELEASED_TASKS)
    try:
        running = resolve_decoders(heads, decoders)
    except ValueError as err:  # an unknown head, named by the resolver
        raise CheckpointError(f"{settings}: {err}") from None
    _check_heads(settings, output_classes(decoders, running))
    return ModelFolder(weights, settings, decoders, running)


def _check_heads(path: Path, classes: Mapping[str, int]) -> None:
    """The running heads' sizes against the vocabulary: their indices are stored, coloured and summarised by
    the vocabulary's names, so another count is another model's classes."""
    known = head_outputs()
    for key, outputs in classes.items():
        if key not in known:
            raise CheckpointError(f"{path}: {key} is not a head this package reads ({', '.join(known)})")
        if outputs != len(known[key]):
            names = known[key]
            raise CheckpointError(
                f"{path}: {key} has {outputs} outputs; this package reads {len(names)} ({', '.join(names)})"
            )


def _check_layout(path: Path, state: Mapping[str, torch.Tensor], model: CerberusNet) -> None:
    """One-line reasons for what a strict load would reject."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
            raise CheckpointError(f"{path}: {len(keys)} {label} keys: {', '.join(keys[:_SHOWN])}{more}")
    for key, tensor in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor) or got.shape != tensor.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckpointError(f"{path}: {key} has shape {shape}, the model expects {tuple(tensor.shape)}")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    model_dir: str | Path, device: str | torch.device | None = None, heads: Iterable[str] | None = None
) -> CerberusNet:
    """The network of a model directory, strictly loaded, in eval mode on `device` (CUDA if available).

    `heads` restricts which decoders run (user spellings, decoder names or output keys).
    Raises CheckpointError (one line, naming the file) for any unloadable directory.
    """
    folder = read_model_folder(model_dir, heads)
    weights = folder.weights
    model = CerberusNet(folder.decoders, tuple(folder.decoders)).run_only(folder.running)
    unverified = verify_weights(weights)
    state = read_state_dict(weights)
    _check_layout(weights, state, model)
    model.load_state_dict(state, strict=True)
    if unverified:  # only now: a file that does not load is refused, not warned about
        warnings.warn(unverified, stacklevel=2)
    return model.eval().to(device or default_device())
