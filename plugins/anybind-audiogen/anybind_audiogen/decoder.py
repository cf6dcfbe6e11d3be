"""Conditioning sequence -> speech: latent diffusion over log-mel spectrograms, then a vocoder.

The AudioLDM design on Stable Diffusion's parts: an ``AutoencoderKL`` compresses a
``(1, n_mels, frames)`` log-mel grid, a ``UNet2DConditionModel`` denoises its latents while
cross-attending to the conditioning (the token states all-MiniLM-L6-v2 gives a caption such as
"the spoken word seven", or the output projector's prediction of them), DDIM samples with
classifier-free guidance, and Griffin-Lim (:mod:`anybind_audiogen.mel`) turns the mel into a
16 kHz waveform. diffusers' own ``AudioLDMPipeline`` conditions on one pooled CLAP vector; an
anybind decoder reads a token sequence, so :class:`MelDiffusionPipeline` is that pipeline's
loop with cross-attention, saved and loaded like any diffusers pipeline.

A directory written by ``anybind train decoder --decoder audiogen`` holds ``model_index.json``,
``vae/``, ``unet/``, ``scheduler/`` and ``anybind.json`` (the prompt encoder and the mel settings).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from anybind.errors import CheckpointError, DecoderError
from anybind_diffusion.decoder import ANYBIND_FILE, DiffusionDecoder, MiniLMPrompts, read_prompt_config
from anybind_audiogen.mel import MelCodec, MelConfig

FORMAT = "anybind.decoder.audiogen"


class MelDiffusionPipeline(DiffusionPipeline):
    """vae + unet + scheduler over log-mel grids: ``__call__`` returns ``(B, 1, H, W)`` mels in [-1, 1]."""

    model_cpu_offload_seq = "unet->vae"

    def __init__(self, vae, unet, scheduler):
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def __call__(self, prompt_embeds, negative_prompt_embeds, *, height: int, width: int, guidance_scale: float = 3.0,
                 num_inference_steps: int = 25, generator=None):
        guided = guidance_scale > 1.0
        shape = (len(prompt_embeds), self.unet.config.in_channels,
                 height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if guided else prompt_embeds
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
            noise = self.unet(model_input, t, encoder_hidden_states=embeds).sample
            if guided:
                unconditional, conditional = noise.chunk(2)
                noise = unconditional + guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(noise, t, latents).prev_sample
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample.clamp(-1, 1)


class SpeechDecoder(DiffusionDecoder):
    """Conditioning ``(B, tokens, width)`` -> :class:`anybind_audio.encoder.Audio` clips (16 kHz mono)."""

    modality = "audio"

    def __init__(self, pipeline, prompts, config, mel: MelConfig, path: Path | None = None):
        super().__init__(pipeline, prompts, config, path)
        self.codec = MelCodec(mel)

    @torch.no_grad()
    def decode(self, cond: torch.Tensor, *, negative: torch.Tensor | None = None, guidance: float | None = None,
               steps: int | None = None, seed: int = 0, generator: torch.Generator | None = None):
        from anybind_audio.encoder import Audio

        guidance, steps, neg, generator = self.sampling(cond, negative, guidance, steps, seed, generator)
        mels = self.pipeline(cond.to(self.device, self.dtype), neg.to(self.device, self.dtype),
                             height=self.codec.config.n_mels, width=self.codec.config.frames,
                             guidance_scale=guidance, num_inference_steps=steps, generator=generator)
        waves = self.codec.decode(mels.float().cpu(), seed=seed)
        return [Audio(w.numpy(), self.codec.config.sample_rate) for w in waves]


def read_meta(path: Path) -> dict:
    """``anybind.json`` of an audiogen directory, or a clear error saying what is missing."""
    if not path.exists():
        raise CheckpointError(f"{path}: decoder directory not found")
    marker = path / ANYBIND_FILE
    if not path.is_dir() or not marker.is_file():
        raise DecoderError(f"{path}: not an audiogen decoder directory (no {ANYBIND_FILE}); "
                           "train one with `anybind train decoder --decoder audiogen`")
    try:
        meta = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DecoderError(f"{marker}: unreadable ({exc})") from None
    if meta.get("format") != FORMAT:
        raise DecoderError(f"{path}: a {meta.get('format') or 'decoder of unknown format'}, not an audiogen decoder")
    missing = [part for part in ("model_index.json", "unet", "vae", "scheduler") if not (path / part).exists()]
    if missing:
        raise DecoderError(f"{path}: incomplete audiogen decoder: missing {', '.join(missing)}")
    return meta


def load_decoder(path, device=None, dtype=None) -> SpeechDecoder:
    """Load a directory written by ``anybind train decoder --decoder audiogen``."""
    from diffusers.utils import logging as diffusers_logging

    from anybind.models.backbone import default_device, default_dtype

    path = Path(path)
    meta = read_meta(path)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    try:
        pipeline = MelDiffusionPipeline.from_pretrained(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise DecoderError(f"{path}: cannot load the audiogen pipeline ({exc})") from None
    config = read_prompt_config(meta)
    decoder = SpeechDecoder(pipeline, MiniLMPrompts(config), config, MelConfig.from_dict(meta.get("mel", {})), path)
    return decoder.to(device, dtype)
