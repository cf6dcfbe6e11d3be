"""anybind-audio: speech and sound as a modality, bound to images only."""

import anybind
from anybind.specs import ModalitySpec


@anybind.hookimpl
def register_modalities(register):
    register(
        ModalitySpec(
            name="audio",
            description="Audio (wav flac ogg mp3 ...) at 16 kHz; log-mel -> conv patches -> transformer",
            suffixes=(".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus"),
            mime_types=("audio/wav", "audio/x-wav", "audio/flac", "audio/ogg", "audio/mpeg", "audio/mp4", "audio/opus"),
            loader="anybind_audio.encoder:load_audio",
            encoder="anybind_audio.encoder:AudioEncoder",
            world="anybind_audio.world:build",
            # 600 steps (about 70 s on 2 cores): held-out voices, fast or slow, high or low, over
            # coloured noise were told 0.88 of the time, 0.83 at 300 (bench/RESULTS.md)
            train={"steps": 600, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-3},
        )
    )
