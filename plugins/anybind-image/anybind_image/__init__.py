"""anybind-image: images as a modality (the binding modality of the shared space)."""

import anybind
from anybind.specs import ModalitySpec

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@anybind.hookimpl
def register_modalities(register):
    register(
        ModalitySpec(
            name="image",
            description="Images via Pillow and a timm ViT (binding modality)",
            suffixes=SUFFIXES,
            mime_types=("image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp", "image/tiff"),
            loader="anybind_image.encoder:load_image",
            encoder="anybind_image.encoder:ImageEncoder",
            world="anybind_image.world:build",
            # New towers read images as line drawings (either polarity, any paper, size or place) and
            # train on turned and scaled digits: printed and photographed digits from 0.09 to 0.86
            # zero-shot (bench/RESULTS.md). The config's own defaults ("none", no turn) keep towers
            # saved before this loading as they were.
            config={"normalize": "ink", "rotate": 12.0, "scale": 0.1},
            train={"steps": 250, "batch_size": 128, "lr": 2e-3, "weight_decay": 1e-4},
        )
    )
