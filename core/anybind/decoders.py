"""Output decoders: find one by reference, load it, and write what it makes safely.

A decoder reference is ``NAME:PATH`` (``sd:/models/stable-diffusion``) or a bare ``PATH``:
a directory trained by anybind names its decoder in ``anybind.json``; otherwise the one
installed decoder of the wanted modality is used. See :class:`anybind.specs.DecoderSpec`
for what a decoder object offers.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from anybind import plugins
from anybind.errors import AnybindError, PluginError
from anybind.specs import DecoderSpec, resolve



def decoder_for(modality: str, name: str | None = None) -> DecoderSpec:
    """The installed decoder ``name``, or the only installed decoder producing ``modality``."""
    if name:
        return plugins.get_decoder(name)
    found = [s for s in plugins.decoders().values() if s.modality == modality]
    if not found:
        from anybind.registry import find_provider

        try:
            entry = find_provider("decoders", "sd") if modality == "image" else None
        except Exception:  # noqa: BLE001 - a broken registry must not hide the real error
            entry = None
        hint = f" Install one with: anybind install {entry.name}" if entry else ""
        raise PluginError(f"no installed plugin provides a decoder for {modality!r}.{hint}")
    if len(found) > 1:
        names = ", ".join(sorted(s.name for s in found))
        raise PluginError(f"several decoders make {modality!r} ({names}); choose one with NAME:PATH")
    return found[0]


def parse_reference(reference: str, modality: str = "image") -> tuple[DecoderSpec, Path]:
    name, sep, rest = str(reference).partition(":")
    if sep and len(name) > 1 and name in plugins.decoders():
        return plugins.get_decoder(name), Path(rest)
    path = Path(reference)
    marker = path / "anybind.json"
    if marker.is_file():
        try:
            named = json.loads(marker.read_text()).get("decoder")
        except (OSError, json.JSONDecodeError):
            named = None
        if named:
            return decoder_for(modality, named), path
    return decoder_for(modality), path


def load_decoder(reference: str, device=None, modality: str = "image"):
    """Load the decoder a reference points at (see the module docstring)."""
    spec, path = parse_reference(reference, modality)
    return resolve(spec.factory, what=f"factory of decoder {spec.name!r}")(path, device=device)


def train_decoder(manifest, out, name: str | None = None, modality: str = "image", **options) -> Path:
    spec = decoder_for(modality, name)
    if spec.trainer is None:
        raise PluginError(f"decoder {spec.name!r} cannot be trained by anybind (its plugin gives no trainer)")
    return resolve(spec.trainer, what=f"trainer of decoder {spec.name!r}")(manifest, out, **options)


def check_writable(path: Path | str) -> Path:
    """Fail before any work if ``path`` cannot be written (folder missing, read-only, a directory)."""
    path = Path(path)
    if path.is_dir():
        raise AnybindError(f"{path}: is a directory; give a file name such as {path / 'image.png'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise AnybindError(f"{path}: cannot write: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise AnybindError(f"{path}: cannot write: folder {parent} is not writable")
    return path


def save_image(image, path: Path | str) -> Path:
    """Write a PIL image atomically (format from the suffix): no partial file on failure."""
    path = check_writable(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".png": "PNG"}.get(path.suffix.lower())
    if fmt is None:
        raise AnybindError(f"{path}: unsupported image suffix {path.suffix or '(none)'}; use .png, .jpg, .webp or .bmp")
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=fmt)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise AnybindError(f"{path}: cannot write: {exc.strerror or exc}") from None
        raise
    return path
