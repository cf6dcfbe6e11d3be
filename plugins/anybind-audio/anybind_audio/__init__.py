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
            train={"steps": 300, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-3},
        )
    )
