"""``anybind train decoder``: a tiny Stable Diffusion trained from scratch on a manifest's images.

The two phases (autoencoder, then the caption-conditioned denoiser) are
:func:`anybind_diffusion.latent.train_latent_diffusion`'s. The result is a standard diffusers
directory (``model_index.json``, ``vae/``, ``unet/``, ``scheduler/`` with DDIM) plus
``anybind.json`` naming the prompt encoder. The default sizes suit 32x32 images on a 2-core
CPU; every size is a setting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from anybind.errors import InputError
from anybind.training.trainer import MetricsLog, say
from anybind.data.manifest import read_manifest
from anybind_diffusion.decoder import ANYBIND_FILE, write_anybind_file
from anybind_diffusion.latent import (LatentSettings, announce_prompts, begin, parse_settings, sampler, save_pipeline,
                                      train_latent_diffusion)


@dataclass
class DecoderSettings(LatentSettings):
    size: int = 32  # images are resized to size x size


class _Pixels:
    """The ``preprocess`` step of :func:`anybind.bind.load_samples`: PIL -> [-1, 1] tensor."""

    def __init__(self, size: int):
        self.size = size

    def preprocess(self, image) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        image = image.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        array = torch.from_numpy(np.asarray(image, dtype="float32") / 127.5 - 1.0)
        return array.permute(2, 0, 1).contiguous()


def _load_images(manifest, settings: DecoderSettings, accelerator, out: Path):
    from anybind.training.samples import load_samples

    rows = [r for r in manifest.select("train", has=("image",)) if r.get("text") or r.get("label")]
    if not rows:
        raise InputError(manifest.path, "no training rows with an image and a caption (text) or label")
    rows, images = load_samples(manifest, rows, "image", _Pixels(settings.size), settings, accelerator,
                                MetricsLog(out / "bad_rows.jsonl", accelerator.is_main_process))
    captions = [str(r.get("text") or manifest.caption("image", r["label"])) for r in rows]
    return torch.stack(images), captions


def train_decoder(manifest, out, *, retrain: bool = False, **options) -> Path:
    """Train a tiny SD decoder on the image rows of ``manifest`` into ``out``; returns ``out``.

    ``options`` override :class:`DecoderSettings` fields (``steps`` sets ``unet_steps``).
    A finished decoder is kept unless ``retrain``; an interrupted run resumes.
    """
    from diffusers import StableDiffusionPipeline

    out = Path(out)
    settings = parse_settings(DecoderSettings, options)
    accelerator, needed = begin(out, settings, retrain, ANYBIND_FILE)
    if not needed:
        return out
    manifest = read_manifest(manifest)
    metrics = MetricsLog(out / "metrics.jsonl", accelerator.is_main_process)
    prompt_config = announce_prompts(out, settings, accelerator, "sd", settings.size, settings.size)
    images, captions = _load_images(manifest, settings, accelerator, out)
    record = {"settings": asdict(settings), "images": len(captions), "manifest": str(manifest.path)}
    vae, unet, scheduler = train_latent_diffusion(images, captions, settings, out, accelerator, metrics, record,
                                                  prompt_config, sample_size=settings.size)
    if not accelerator.is_main_process:
        return out
    pipeline = StableDiffusionPipeline(
        vae=vae, unet=unet, scheduler=sampler(scheduler), text_encoder=None,
        tokenizer=None, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    save_pipeline(pipeline, out, record, lambda: write_anybind_file(out, prompt_config))
    say(accelerator, f"decoder: saved to {out} (vae {record['parameters']['vae'] / 1e6:.2f}M, "
                     f"unet {record['parameters']['unet'] / 1e6:.2f}M parameters)")
    return out
