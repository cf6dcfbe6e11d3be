"""How spoken outputs are saved and shown: 16-bit WAV files, ``<audio controls>`` in HTML."""

from __future__ import annotations

import io
from pathlib import Path

from anybind.chat.render import Media
from anybind.errors import AnybindError
from anybind.persistence import write_output_file

SUFFIXES = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}


def wav_bytes(clip, fmt: str = "WAV") -> bytes:
    import numpy as np
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(clip.samples, -1, 1), clip.sample_rate, format=fmt,
             subtype="PCM_16" if fmt != "OGG" else "VORBIS")
    return buffer.getvalue()


def save_audio(clip, path) -> Path:
    """Write a clip atomically (format from the suffix): no partial file on failure."""
    path = Path(path)
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise AnybindError(f"{path}: unsupported audio suffix {path.suffix or '(none)'}; use .wav, .flac or .ogg")
    return write_output_file(path, wav_bytes(clip, fmt))


AUDIO = Media(".wav", save_audio, wav_bytes, "audio/wav", "<audio controls title=\"{alt}\" src=\"{src}\"></audio>",
              markdown="[{alt}]({src})")
