"""Decoder names, output keys and the user's spellings of which heads to run."""

from __future__ import annotations

from typing import Iterable, Mapping

from cerberus_batch.vocabulary import model_class_names

PATCH_CLASS = "Patch-Class"
RELEASED_TASKS = ("Nuclei", "Nuclei#TYPE", "Gland", "Gland#TYPE", "Lumen", PATCH_CLASS)
SPELLINGS = {
    "nuclei": ("Nuclei", "Nuclei#TYPE"),
    "gland": ("Gland", "Gland#TYPE"),
    "lumen": ("Lumen",),
    "tissue": (PATCH_CLASS,),
}
CLASS_NAMES = model_class_names()  # per classifying head (spec §10, dataset.yml)


def output_key(decoder: str, head: str) -> str:
    """`Nuclei#TYPE` + `TYPE` -> `Nuclei-TYPE`; the patch classifier keeps its decoder name."""
    if decoder == PATCH_CLASS:
        return PATCH_CLASS
    return f"{decoder.split('#')[0]}-{head}"


def considered_decoders(
    decoder_kwargs: Mapping[str, Mapping[str, int]], considered_tasks: Iterable[str] = RELEASED_TASKS,
) -> dict[str, dict[str, int]]:
    """{decoder: {head: classes}} of the decoders a model holds: those of `considered_tasks`, in settings order."""
    considered = set(considered_tasks)
    return {d: dict(h) for d, h in decoder_kwargs.items() if d in considered}


def output_classes(decoder_heads: Mapping[str, Mapping[str, int]], running: Iterable[str]) -> dict[str, int]:
    """Logit channels of each output key of the `running` decoders, in forward order."""
    return {output_key(d, h): classes for d in running for h, classes in decoder_heads[d].items()}


def resolve_decoders(requested: Iterable[str] | None, decoder_heads: Mapping[str, Mapping[str, int]]) -> tuple[str, ...]:
    """The decoders to run, in model order, for user spellings, decoder names or output keys.

    None means all of them. Raises ValueError naming an unknown head.
    """
    if requested is None:
        return tuple(decoder_heads)
    by_key = {output_key(d, h): d for d, heads in decoder_heads.items() for h in heads}
    wanted: set[str] = set()
    for name in [requested] if isinstance(requested, str) else requested:
        if name.lower() in SPELLINGS:
            found = [d for d in SPELLINGS[name.lower()] if d in decoder_heads]
        else:
            found = [d for d in (name, by_key.get(name)) if d in decoder_heads][:1]
        if not found:
            known = sorted({*SPELLINGS, *decoder_heads, *by_key})
            raise ValueError(f"unknown head {name!r}; expected one of {', '.join(known)}")
        wanted.update(found)
    return tuple(d for d in decoder_heads if d in wanted)


def spellings_of(output_keys: Iterable[str]) -> tuple[str, ...]:
    """The user spellings of heads whose every output is among `output_keys` (e.g. a predictor's heads)."""
    keys = set(output_keys)
    return tuple(
        name for name, decoders in SPELLINGS.items()
        if all(output_key(d, "TYPE" if d.endswith("#TYPE") else "INST") in keys for d in decoders)
    )
