"""Latent diffusion from scratch, for any output whose samples are small grids: images, or the
log-mel spectrograms of ``anybind-audiogen`` (AudioLDM's design: Stable Diffusion's parts over mels).

Two phases, each through anybind's shared loop (progress bar, metrics, resumable):

1. ``vae``: an ``AutoencoderKL`` learns to compress samples to a small latent grid
   (reconstruction + a light KL term); its latents' scale is measured and stored as the
   VAE's ``scaling_factor``, as Stable Diffusion does.
2. ``unet``: a ``UNet2DConditionModel`` learns to denoise those latents (epsilon
   prediction, the scaled-linear DDPM schedule of SD), cross-attending to the token states
   a frozen sentence encoder gives the row's caption; captions are dropped 10% of the time
   so that classifier-free guidance works.

A plugin's trainer loads its samples, calls :func:`train_latent_diffusion`, wraps the parts in
its diffusers pipeline and saves it with :func:`save_pipeline`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anybind.errors import AnybindError
from anybind.persistence import write_json_atomic
from anybind.training.trainer import LoopSettings, run_loop, say
from anybind_diffusion.decoder import MiniLMPrompts, PromptEncoderConfig


@dataclass
class LatentSettings:
    vae_channels: tuple[int, ...] = (32, 64, 64)  # 3 blocks: latents are 4x smaller on each side
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128)
    cross_attention: tuple[bool, ...] = (True, False)  # per down block (mirrored going up)
    layers_per_block: int = 1
    head_dim: int = 8
    max_tokens: int = 16
    vae_steps: int = 100
    unet_steps: int = 450
    batch_size: int = 64
    vae_batch_size: int | None = None  # None: batch_size
    vae_lr: float = 1e-3
    unet_lr: float = 1e-3
    kl_weight: float = 1e-6
    caption_dropout: float = 0.1
    seed: int = 0
    save_every: int = 100
    on_bad_row: str = "skip"
    progress: bool = True
    text_encoder: str = ""  # local encoder dir; empty = packaged all-MiniLM-L6-v2
    steps: int = 25  # default sampling steps stored with the decoder
    guidance: float = 3.0
    extra: dict = field(default_factory=dict)


def announce_prompts(out: Path, settings: LatentSettings, accelerator, decoder: str, height: int,
                     width: int) -> PromptEncoderConfig:
    """The decoder's prompt encoder settings, written to ``prompts.json`` before training starts
    (align-out can read the conditioning while the decoder trains)."""
    from anybind_diffusion.decoder import write_prompts_file

    config = PromptEncoderConfig(text_encoder=settings.text_encoder, max_tokens=settings.max_tokens, height=height,
                                 width=width, steps=settings.steps, guidance=settings.guidance)
    if accelerator.is_main_process:
        write_prompts_file(out, config, decoder=decoder)
    return config


def parse_settings(cls, options: dict):
    """``cls`` (a :class:`LatentSettings`) from a trainer's options; ``steps`` sets ``unet_steps``."""
    known = cls.__dataclass_fields__
    options = dict(options)
    if options.get("steps") is not None:
        options["unet_steps"] = options.pop("steps")
    unknown = sorted(k for k, v in options.items() if k not in known and v is not None)
    if unknown:
        raise AnybindError(f"unknown decoder setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**{k: v for k, v in options.items() if v is not None})


def begin(out: Path, settings, retrain: bool, marker: str):
    """The start every trainer shares: the accelerator, and whether to train at all (a decoder
    already in ``out`` is kept unless ``retrain``, which removes its parts first); seeds torch."""
    from anybind.training.trainer import make_accelerator

    accelerator = make_accelerator()
    if (out / marker).is_file() and not retrain:
        say(accelerator, f"decoder: {out} is already trained (use --retrain to train it again)")
        return accelerator, False
    if retrain:
        for part in ("vae", "unet", "progress", marker, "model_index.json"):
            target = out / part
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    return accelerator, True


class _VAEObjective(nn.Module):
    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(samples).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        return F.mse_loss(recon, samples) + self.kl_weight * posterior.kl().mean()


class _UNetObjective(nn.Module):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas", scheduler.alphas_cumprod.clone(), persistent=False)

    def forward(self, latents: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.alphas.numel(), (latents.shape[0],), device=latents.device)
        a = self.alphas.to(latents.device)[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        return F.mse_loss(self.unet(noisy, t, encoder_hidden_states=cond).sample.float(), noise.float())


def build_vae(s: LatentSettings, channels: int = 3, sample_size=32):
    from diffusers import AutoencoderKL

    n = len(s.vae_channels)
    return AutoencoderKL(
        in_channels=channels, out_channels=channels, latent_channels=s.latent_channels, sample_size=sample_size,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(s.vae_channels), layers_per_block=1, norm_num_groups=min(32, s.vae_channels[0]),
    )


def build_unet(s: LatentSettings, width: int, sample_size):
    from diffusers import UNet2DConditionModel

    n = len(s.unet_channels)
    cross = tuple(s.cross_attention) if len(s.cross_attention) == n else (True,) * n
    down = tuple("CrossAttnDownBlock2D" if c else "DownBlock2D" for c in cross)
    up = tuple("CrossAttnUpBlock2D" if c else "UpBlock2D" for c in reversed(cross))
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=s.latent_channels,
        out_channels=s.latent_channels, down_block_types=down, up_block_types=up,
        block_out_channels=tuple(s.unet_channels), layers_per_block=s.layers_per_block,
        cross_attention_dim=width, attention_head_dim=s.head_dim, norm_num_groups=min(32, s.unet_channels[0]),
    )


def latent_size(s: LatentSettings, size):
    """The latent grid of samples of ``size`` (an int, or (height, width))."""
    factor = 2 ** (len(s.vae_channels) - 1)
    return size // factor if isinstance(size, int) else tuple(d // factor for d in size)


def noise_schedule():
    from diffusers import DDPMScheduler

    # Stable Diffusion's own training schedule.
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False)


def sampler(scheduler):
    """The DDIM sampler a trained decoder is saved with."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler.config, steps_offset=1, set_alpha_to_one=False)


def save_part(model, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)


def train_latent_diffusion(samples: torch.Tensor, captions: list[str], settings: LatentSettings, out: Path,
                           accelerator, metrics, record: dict, prompt_config: PromptEncoderConfig, sample_size=32):
    """Both phases on ``samples`` ``(N, C, H, W)`` in [-1, 1] with their ``captions``; returns
    ``(vae, unet, scheduler)``. A VAE already saved in ``out/vae`` is reused; timings and the
    reconstruction error go into ``record``."""
    from diffusers import AutoencoderKL

    if (out / "vae" / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(str(out / "vae"))
        say(accelerator, f"decoder vae: reusing {out / 'vae'}")
    else:
        vae = build_vae(settings, samples.shape[1], sample_size)
        objective = _VAEObjective(vae, settings.kl_weight)
        record["vae_seconds"] = round(run_loop(
            stage="decoder", name="vae", module=objective, n_rows=len(samples),
            step_fn=lambda model, idx: model(samples[idx].to(accelerator.device)),
            loop=LoopSettings(settings.vae_steps, settings.vae_batch_size or settings.batch_size, settings.vae_lr,
                              seed=settings.seed,
                              save_every=settings.save_every, progress=settings.progress),
            accelerator=accelerator, progress_dir=out / "progress" / "vae", metrics=metrics), 1)
        vae = accelerator.unwrap_model(objective).vae
        vae.eval()
        with torch.no_grad():
            means = torch.cat([vae.encode(chunk.to(accelerator.device)).latent_dist.mean.cpu() for chunk in samples.split(256)])
        vae.register_to_config(scaling_factor=float(1.0 / means.std()))
        if accelerator.is_main_process:
            save_part(vae.cpu(), out / "vae")
    vae.eval().requires_grad_(False).to(accelerator.device)
    scale = vae.config.scaling_factor
    with torch.no_grad():
        posteriors = [vae.encode(chunk.to(accelerator.device)).latent_dist for chunk in samples.split(256)]
        mean = torch.cat([p.mean.cpu() for p in posteriors]) * scale
        std = torch.cat([p.std.cpu() for p in posteriors]) * scale
        recon = vae.decode(mean[:256].to(accelerator.device) / scale).sample.cpu()
        record["vae_reconstruction_mse"] = round(float(F.mse_loss(recon, samples[:256])), 5)
    say(accelerator, f"decoder vae: reconstruction MSE {record['vae_reconstruction_mse']} (samples in [-1, 1])")

    prompts = MiniLMPrompts(prompt_config)
    unique = sorted(set(captions)) + [""]
    table = torch.cat([prompts(unique[i:i + 256]) for i in range(0, len(unique), 256)])
    which = torch.tensor([unique.index(c) for c in captions])
    empty = len(unique) - 1
    unet = build_unet(settings, prompts.width, latent_size(settings, sample_size))
    scheduler = noise_schedule()
    objective = _UNetObjective(unet, scheduler)
    drop = torch.Generator().manual_seed(settings.seed + 7)

    def unet_step(model, idx):
        latents = mean[idx] + std[idx] * torch.randn_like(mean[idx])
        keep = torch.rand(len(idx), generator=drop) >= settings.caption_dropout
        cond = table[torch.where(keep, which[idx], torch.full_like(which[idx], empty))]
        return model(latents.to(accelerator.device), cond.to(accelerator.device))

    record["unet_seconds"] = round(run_loop(
        stage="decoder", name="unet", module=objective, n_rows=len(captions), step_fn=unet_step,
        loop=LoopSettings(settings.unet_steps, settings.batch_size, settings.unet_lr, seed=settings.seed,
                          save_every=settings.save_every, progress=settings.progress),
        accelerator=accelerator, progress_dir=out / "progress" / "unet", metrics=metrics), 1)
    unet = accelerator.unwrap_model(objective).unet.eval().cpu()
    record["parameters"] = {"vae": sum(p.numel() for p in vae.parameters()),
                            "unet": sum(p.numel() for p in unet.parameters())}
    return vae.cpu(), unet, scheduler


def save_pipeline(pipeline, out: Path, record: dict, finish) -> None:
    """Save ``pipeline`` into ``out`` (its vae/ already there), the training record, then
    ``finish()`` (which writes the file that marks the decoder complete)."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "text_encoder=None cannot be saved": by design
    staging = out / "progress" / "pipeline"
    shutil.rmtree(staging, ignore_errors=True)
    pipeline.save_pretrained(str(staging))
    for part in ("unet", "scheduler"):
        shutil.rmtree(out / part, ignore_errors=True)
        (staging / part).replace(out / part)
    (staging / "model_index.json").replace(out / "model_index.json")
    write_json_atomic(out / "training.json", record)
    shutil.rmtree(out / "progress", ignore_errors=True)
    finish()
