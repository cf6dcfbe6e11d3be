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
            train={"steps": 250, "batch_size": 128, "lr": 2e-3, "weight_decay": 1e-4},
        )
    )
