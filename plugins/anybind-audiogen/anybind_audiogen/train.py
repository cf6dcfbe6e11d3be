"""``anybind train decoder --decoder audiogen``: the speech decoder, trained from scratch on a
manifest's audio rows and their captions (``world.json``'s ``captions.audio``: "the spoken word seven").

Clips become fixed windows of log-mel (:class:`~anybind_audiogen.mel.MelCodec`); the autoencoder
and the denoiser train on them exactly as the image decoder's do
(:func:`anybind_diffusion.latent.train_latent_diffusion`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from anybind.data.manifest import read_manifest
from anybind.errors import InputError
from anybind.training.trainer import MetricsLog, say
from anybind_diffusion.decoder import ANYBIND_FILE, write_anybind_file
from anybind_diffusion.latent import (LatentSettings, announce_prompts, begin, parse_settings, sampler, save_pipeline,
                                      train_latent_diffusion)
from anybind_audiogen.decoder import FORMAT, MelDiffusionPipeline
from anybind_audiogen.mel import MelCodec, MelConfig


@dataclass
class SpeechDecoderSettings(LatentSettings):
    n_mels: int = 40  # the log-mel grid: n_mels x frames (32 frames of 22 ms: 0.7 s)
    frames: int = 32
    # A smaller autoencoder than the image decoder's, trained longer on smaller batches: speech
    # through the (32, 64, 64) one after 100 steps was judged right 0.62 of the time, through
    # this one after 300 steps 0.93 (bench/RESULTS.md), in less time.
    vae_channels: tuple[int, ...] = (16, 32, 32)
    vae_steps: int = 300
    vae_lr: float = 2e-3
    # The denoiser: 800 steps of 32 clips take the time of 450 of 64 and speak right 0.94 of
    # the time from captions at guidance 5 (0.89 for 450 of 64; bench/RESULTS.md).
    batch_size: int = 32
    unet_steps: int = 800
    # From captions, speech was judged right 0.83 / 0.92 / 0.95 of the time at guidance 3 / 5 / 8.
    guidance: float = 8.0


class _Window:
    """The ``preprocess`` step of :func:`anybind.training.samples.load_samples`: a clip -> its waveform window."""

    def __init__(self, codec: MelCodec):
        self.codec = codec

    def preprocess(self, clip) -> torch.Tensor:
        return self.codec.window(clip.samples, clip.sample_rate)


def _load_mels(manifest, codec: MelCodec, settings, accelerator, out: Path):
    from anybind.training.samples import load_samples

    rows = [r for r in manifest.select("train", has=("audio",)) if r.get("text") or r.get("label")]
    if not rows:
        raise InputError(manifest.path, "no training rows with an audio file and a caption (text) or label")
    rows, waves = load_samples(manifest, rows, "audio", _Window(codec), settings, accelerator,
                               MetricsLog(out / "bad_rows.jsonl", accelerator.is_main_process))
    mels = torch.cat([codec.encode(torch.stack(waves[i:i + 256])) for i in range(0, len(waves), 256)])
    return mels, [str(r.get("text") or manifest.caption("audio", r["label"])) for r in rows]


def train_decoder(manifest, out, *, retrain: bool = False, **options) -> Path:
    """Train the speech decoder on the audio rows of ``manifest`` into ``out``; returns ``out``.

    ``options`` override :class:`SpeechDecoderSettings` fields (``steps`` sets ``unet_steps``).
    A finished decoder is kept unless ``retrain``; an interrupted run resumes.
    """
    out = Path(out)
    settings = parse_settings(SpeechDecoderSettings, options)
    mel = MelConfig(n_mels=settings.n_mels, frames=settings.frames)
    accelerator, needed = begin(out, settings, retrain, ANYBIND_FILE)
    if not needed:
        return out
    manifest = read_manifest(manifest)
    metrics = MetricsLog(out / "metrics.jsonl", accelerator.is_main_process)
    prompt_config = announce_prompts(out, settings, accelerator, "audiogen", mel.n_mels, mel.frames)
    mels, captions = _load_mels(manifest, MelCodec(mel), settings, accelerator, out)
    record = {"settings": asdict(settings), "clips": len(captions), "manifest": str(manifest.path), "mel": mel.to_dict()}
    vae, unet, scheduler = train_latent_diffusion(mels, captions, settings, out, accelerator, metrics, record,
                                                  prompt_config, sample_size=(mel.n_mels, mel.frames))
    if not accelerator.is_main_process:
        return out
    pipeline = MelDiffusionPipeline(vae=vae, unet=unet, scheduler=sampler(scheduler))
    save_pipeline(pipeline, out, record, lambda: write_anybind_file(out, prompt_config, decoder="audiogen",
                                                                    format=FORMAT, mel=mel.to_dict()))
    say(accelerator, f"decoder: saved to {out} (vae {record['parameters']['vae'] / 1e6:.2f}M, "
                     f"unet {record['parameters']['unet'] / 1e6:.2f}M parameters)")
    return out
