"""Output decoders: find one by reference and load it.

A decoder reference is ``NAME:PATH`` (``sd:/models/stable-diffusion``) or a bare ``PATH``:
a directory trained by anybind names its decoder in ``anybind.json`` (``prompts.json`` while it trains); otherwise the one
installed decoder (of the wanted output modality, if one is given) is used. See :class:`anybind.specs.DecoderSpec`
for what a decoder object offers.
"""

from __future__ import annotations

import json
from pathlib import Path

from anybind import plugins
from anybind.errors import PluginError
from anybind.specs import DecoderSpec, resolve

#: Where a decoder directory names its decoder: ``anybind.json`` once trained, ``prompts.json``
#: (its prompt encoder's settings) from the start of its training.
MARKERS = ("anybind.json", "prompts.json")


def output_verbs(modalities) -> str:
    """How a user asks for these outputs in this order: each decoder's first verb ("draw it and say it")."""
    return " and ".join((decoder_for(m).output_prompts().verb or ("make it",))[0] for m in modalities)


def decoder_for(modality: str | None = None, name: str | None = None) -> DecoderSpec:
    """The installed decoder ``name``, or the only installed decoder (producing ``modality``, if given)."""
    if name:
        return plugins.get_decoder(name)
    found = [s for s in plugins.decoders().values() if modality is None or s.modality == modality]
    modality = modality or "any output"
    if not found:
        from anybind.plugins.registry import load_registry

        try:
            names = [e.name for e in load_registry() if e.provides.get("decoders")]
        except Exception:  # noqa: BLE001 - a broken registry must not hide the real error
            names = []
        hint = f" Plugins with decoders: {', '.join(names)} (anybind install NAME)." if names else ""
        raise PluginError(f"no installed plugin provides a decoder for {modality!r}.{hint}")
    if len(found) > 1:
        names = ", ".join(sorted(s.name for s in found))
        raise PluginError(f"several decoders make {modality!r} ({names}); choose one with NAME:PATH")
    return found[0]


def parse_reference(reference: str, modality: str | None = None) -> tuple[DecoderSpec, Path]:
    name, sep, rest = str(reference).partition(":")
    if sep and len(name) > 1 and name in plugins.decoders():
        return plugins.get_decoder(name), Path(rest)
    path = Path(reference)
    for marker in (path / name for name in MARKERS):
        if marker.is_file():
            try:
                named = json.loads(marker.read_text()).get("decoder")
            except (OSError, json.JSONDecodeError):
                named = None
            if named:
                return decoder_for(modality, named), path
    return decoder_for(modality), path


def _making(reference: str, modality: str | None) -> tuple[DecoderSpec, Path]:
    """``parse_reference``, and with ``modality`` the decoder must make that."""
    spec, path = parse_reference(reference, modality)
    if modality is not None and spec.modality != modality:
        raise PluginError(f"{reference}: the {spec.name!r} decoder makes {spec.modality} outputs, not {modality}")
    return spec, path


def load_decoder(reference: str, device=None, modality: str | None = None):
    """Load the decoder a reference points at (see the module docstring); with ``modality``, it must make that."""
    spec, path = _making(reference, modality)
    return resolve(spec.factory, what=f"factory of decoder {spec.name!r}")(path, device=device)


def load_prompt_encoder(reference: str, device=None, modality: str | None = None):
    """What training needs of a decoder (``cond_shape`` and ``encode_prompt``): its plugin's
    ``prompt_encoder``, which reads an anybind decoder while it still trains, else the whole decoder."""
    spec, path = _making(reference, modality)
    factory = spec.prompt_encoder or spec.factory
    return resolve(factory, what=f"prompt encoder of decoder {spec.name!r}")(path, device=device)
