"""Problems with a YAML file (and the files it names), reported all at once: `file:line: field: what is wrong`.

There is no line where the field is missing from the file altogether.
"""

from __future__ import annotations

from difflib import get_close_matches
from pathlib import Path
from types import UnionType
from typing import Any, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from cerberus_batch.errors import CohortError, first_line

Lines = dict[tuple[str, ...], int]  # the line (from 1) of each mapping key and list item by its key path


def read_yaml(source: Path, path: str) -> tuple[Any, Lines]:
    """The document, and the line of each mapping key and list item by its key path."""
    try:
        loader = yaml.SafeLoader(source.read_bytes())  # bytes: PyYAML finds the encoding, and says when it is none
        try:
            node = loader.get_single_node()
            raw = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        # The context's line too: an unclosed bracket is found only where the file ends.
        context = f"{err.context} (line {err.context_mark.line + 1})" if err.context and err.context_mark else err.context
        what = ", ".join(part for part in (context, err.problem) if part)
        raise CohortError(f"{path}:{mark.line + 1}: not valid YAML: {what}" if mark else f"{path}: not valid YAML: {what}") from None
    except yaml.YAMLError as err:
        raise CohortError(f"{path}: not valid YAML: {first_line(err)}") from None
    lines: Lines = {}
    if node is not None:
        _record_lines(node, (), lines, set())
    return raw, lines


def _record_lines(node: yaml.Node, at: tuple[str, ...], lines: Lines, seen: set[int]) -> None:
    # Walked after construction, so merge keys (`<<: *defaults`) are already expanded into their mappings.
    # `seen`: an alias reuses its anchor's node, and a recursive alias (`a: &x [*x]`) would never end.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines[at + (key.value,)] = key.start_mark.line + 1
                _record_lines(value, at + (key.value,), lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[at + (str(i),)] = item.start_mark.line + 1
            _record_lines(item, at + (str(i),), lines, seen)


class Problems:
    """Every problem found in one YAML file (and the files it names), one line each."""

    def __init__(self, path: str, lines: Lines):
        self.path = path
        self.lines = lines
        self.found: list[tuple[str, Optional[int], str]] = []  # (file, line, "field: what is wrong")

    def add(self, file: str, line: Optional[int], field: str, text: str) -> None:
        self.found.append((file, line, f"{field}: {text}"))

    def line(self, loc: tuple) -> Optional[int]:
        """The line of the field at `loc`, or of its nearest parent written in the file."""
        keys = tuple(map(str, loc))
        while keys and keys not in self.lines:
            keys = keys[:-1]
        return self.lines.get(keys)

    def at(self, loc: tuple, text: str) -> None:
        """A problem with the YAML file's field at `loc`."""
        self.add(self.path, self.line(loc), ".".join(map(str, loc)), text)

    def validate(self, model: type[BaseModel], raw: Any, at: tuple = ()) -> Any:
        """`raw` (found at `at` in the YAML file) as `model`, or None after adding its problems."""
        try:
            return model.model_validate(raw)
        except ValidationError as err:
            for loc, text in explained(err, model):
                self.at(at + loc, text)
            return None

    def message(self) -> str:
        # The YAML file's problems first, then those of the files it names; each file's in line order.
        ordered = sorted(self.found, key=lambda p: (p[0] != self.path, p[0], p[1] or 0))
        return "\n".join(f"{file}:{line}: {text}" if line else f"{file}: {text}" for file, line, text in ordered)


# Pydantic's wording of the errors numbers get, as ours; `{}` is the value given.
NUMBER_ERRORS = {
    "greater_than": "must be more than {gt}, got {}",
    "greater_than_equal": "must be at least {ge}, got {}",
    "less_than": "must be less than {lt}, got {}",
    "less_than_equal": "must be at most {le}, got {}",
    "int_parsing": "must be a whole number, got {!r}",
    "int_from_float": "must be a whole number, got {}",
    "int_type": "must be a whole number, got {!r}",
    "float_parsing": "must be a number, got {!r}",
    "float_type": "must be a number, got {!r}",
}


def explained(err: ValidationError, model: type[BaseModel]) -> list[tuple[tuple, str]]:
    """Each of pydantic's errors as (location, one-line text); an unknown key names the nearest valid one."""
    out = []
    for error in err.errors():
        loc, text = error["loc"], error["msg"]
        if error["type"] == "value_error":  # our own validators' text, without pydantic's "Value error, "
            text = str(error["ctx"]["error"])
        elif error["type"] in NUMBER_ERRORS:
            text = NUMBER_ERRORS[error["type"]].format(error["input"], **error.get("ctx", {}))
        elif error["type"] == "extra_forbidden":
            valid = _keys_at(model, loc[:-1])
            near = get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.7)  # 0.6 offers cluster for colour
            hint = f"; did you mean {near[0]}?" if near else f"; valid keys: {', '.join(valid)}" if valid else ""
            text = f"unknown key{hint}"
        out.append((loc, text))
    return out


def _keys_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the mapping at `loc` accepts, following the field types down from `model`."""
    kind: Any = model
    for part in loc:
        kind = _unoptional(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel) and part in kind.model_fields:
            kind = kind.model_fields[part].annotation
        elif get_origin(kind) in (list, dict):
            kind = get_args(kind)[-1]  # the item type, or the value type
        else:
            return []
    kind = _unoptional(kind)
    return list(kind.model_fields) if isinstance(kind, type) and issubclass(kind, BaseModel) else []


def _unoptional(kind: Any) -> Any:
    present = [arg for arg in get_args(kind) if arg is not type(None)]
    return present[0] if get_origin(kind) in (Union, UnionType) and len(present) == 1 else kind


def valid_or_none(model: type[BaseModel], raw: Any) -> Any:
    """`raw` as `model`, or None; for a section whose problems validating the whole file has reported."""
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None
