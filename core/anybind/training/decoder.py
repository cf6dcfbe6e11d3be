"""Stage ``decoder``: train an output decoder with its plugin's own trainer (``DecoderSpec.trainer``)."""

from __future__ import annotations

from pathlib import Path

from anybind.errors import PluginError
from anybind.models.decoders import decoder_for
from anybind.specs import resolve
from anybind.training.stage import directory_lock


def train_decoder(manifest, out, name: str | None = None, modality: str | None = None, **options) -> Path:
    """Train the installed decoder ``name`` (or the only one, of ``modality`` if given) into ``out``."""
    spec = decoder_for(modality, name)
    if spec.trainer is None:
        raise PluginError(f"decoder {spec.name!r} cannot be trained by anybind (its plugin gives no trainer)")
    with directory_lock(Path(out)):
        return resolve(spec.trainer, what=f"trainer of decoder {spec.name!r}")(manifest, out, **options)
