"""anybind-video: short clips as a modality, bound to images frame by frame."""

import anybind
from anybind.specs import ModalitySpec


@anybind.hookimpl
def register_modalities(register):
    register(
        ModalitySpec(
            name="video",
            description="Video clips via PyAV; image trunk per frame + temporal attention",
            suffixes=(".mp4", ".webm", ".mkv", ".mov", ".avi"),
            mime_types=("video/mp4", "video/webm", "video/x-matroska", "video/quicktime", "video/x-msvideo"),
            loader="anybind_video.encoder:load_video",
            encoder="anybind_video.encoder:VideoEncoder",
            world="anybind_video.world:build",
            # Starts from the trained image trunk, so a short run is enough; 400 steps rather than 200
            # let clips turned and scaled in training (the sample world's encoders) reach turning
            # clips they never saw (bench/RESULTS.md).
            train={"steps": 400, "batch_size": 64, "lr": 1e-3, "init_from": "image"},
        )
    )
