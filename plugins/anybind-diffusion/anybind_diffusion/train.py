"""``anybind train decoder``: a tiny Stable Diffusion trained from scratch on a manifest.

Two phases, each through anybind's shared loop (progress bar, metrics, resumable):

1. ``vae``: an ``AutoencoderKL`` learns to compress images to a small latent grid
   (reconstruction + a light KL term); its latents' scale is measured and stored as the
   VAE's ``scaling_factor``, as Stable Diffusion does.
2. ``unet``: a ``UNet2DConditionModel`` learns to denoise those latents (epsilon
   prediction, the scaled-linear DDPM schedule of SD), cross-attending to the token states
   a frozen sentence encoder gives the row's caption; captions are dropped 10% of the time
   so that classifier-free guidance works.

The result is a standard diffusers directory (``model_index.json``, ``vae/``, ``unet/``,
``scheduler/`` with DDIM) plus ``anybind.json`` naming the prompt encoder. The default
sizes suit 32x32 images on a 2-core CPU; every size is a setting.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anybind.errors import AnybindError, InputError
from anybind.persistence import write_json_atomic
from anybind.training.trainer import LoopSettings, MetricsLog, make_accelerator, run_loop, say
from anybind.data.manifest import read_manifest
from anybind_diffusion.decoder import ANYBIND_FILE, MiniLMPrompts, PromptEncoderConfig, write_anybind_file


@dataclass
class DecoderSettings:
    size: int = 32  # images are resized to size x size
    vae_channels: tuple[int, ...] = (32, 64, 64)  # 3 blocks: 32x32 -> 8x8 latents
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128)
    cross_attention: tuple[bool, ...] = (True, False)  # per down block (mirrored going up)
    layers_per_block: int = 1
    head_dim: int = 8
    max_tokens: int = 16
    vae_steps: int = 100
    unet_steps: int = 450
    batch_size: int = 64
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


class _VAEObjective(nn.Module):
    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(images).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        return F.mse_loss(recon, images) + self.kl_weight * posterior.kl().mean()


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


def build_vae(s: DecoderSettings):
    from diffusers import AutoencoderKL

    n = len(s.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=s.latent_channels, sample_size=s.size,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(s.vae_channels), layers_per_block=1, norm_num_groups=min(32, s.vae_channels[0]),
    )


def build_unet(s: DecoderSettings, width: int):
    from diffusers import UNet2DConditionModel

    n = len(s.unet_channels)
    cross = tuple(s.cross_attention) if len(s.cross_attention) == n else (True,) * n
    down = tuple("CrossAttnDownBlock2D" if c else "DownBlock2D" for c in cross)
    up = tuple("CrossAttnUpBlock2D" if c else "UpBlock2D" for c in reversed(cross))
    return UNet2DConditionModel(
        sample_size=s.size // 2 ** (len(s.vae_channels) - 1), in_channels=s.latent_channels,
        out_channels=s.latent_channels, down_block_types=down, up_block_types=up,
        block_out_channels=tuple(s.unet_channels), layers_per_block=s.layers_per_block,
        cross_attention_dim=width, attention_head_dim=s.head_dim, norm_num_groups=min(32, s.unet_channels[0]),
    )


def noise_schedule():
    from diffusers import DDPMScheduler

    # Stable Diffusion's own training schedule.
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False)


def _save_part(model, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)


def _load_images(manifest, settings: DecoderSettings, accelerator, out: Path):
    from anybind.training.samples import load_samples

    rows = [r for r in manifest.select("train", has=("image",)) if r.get("text") or r.get("label")]
    if not rows:
        raise InputError(manifest.path, "no training rows with an image and a caption (text) or label")
    rows, images = load_samples(manifest, rows, "image", _Pixels(settings.size), settings, accelerator,
                                MetricsLog(out / "bad_rows.jsonl", accelerator.is_main_process))
    prompt = manifest.prompt or "{label}"
    captions = [str(r.get("text") or prompt.format(label=r["label"])) for r in rows]
    return torch.stack(images), captions


def train_decoder(manifest, out, *, retrain: bool = False, **options) -> Path:
    """Train a tiny SD decoder on the image rows of ``manifest`` into ``out``; returns ``out``.

    ``options`` override :class:`DecoderSettings` fields (``steps`` sets ``unet_steps``).
    A finished decoder is kept unless ``retrain``; an interrupted run resumes.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    out = Path(out)
    known = DecoderSettings.__dataclass_fields__
    if options.get("steps") is not None:
        options["unet_steps"] = options.pop("steps")
    unknown = sorted(k for k, v in options.items() if k not in known and v is not None)
    if unknown:
        raise AnybindError(f"unknown decoder setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    settings = DecoderSettings(**{k: v for k, v in options.items() if v is not None})
    accelerator = make_accelerator()
    if (out / ANYBIND_FILE).is_file() and not retrain:
        say(accelerator, f"decoder: {out} is already trained (use --retrain to train it again)")
        return out
    if retrain:
        for part in ("vae", "unet", "progress", ANYBIND_FILE, "model_index.json"):
            target = out / part
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    manifest = read_manifest(manifest)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    metrics = MetricsLog(out / "metrics.jsonl", accelerator.is_main_process)
    images, captions = _load_images(manifest, settings, accelerator, out)
    record = {"settings": asdict(settings), "images": len(captions), "manifest": str(manifest.path)}

    # Phase 1: the autoencoder.
    from diffusers import AutoencoderKL

    if (out / "vae" / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(str(out / "vae"))
        say(accelerator, f"decoder vae: reusing {out / 'vae'}")
    else:
        vae = build_vae(settings)
        objective = _VAEObjective(vae, settings.kl_weight)
        record["vae_seconds"] = round(run_loop(
            stage="decoder", name="vae", module=objective, n_rows=len(images),
            step_fn=lambda model, idx: model(images[idx].to(accelerator.device)),
            loop=LoopSettings(settings.vae_steps, settings.batch_size, settings.vae_lr, seed=settings.seed,
                              save_every=settings.save_every, progress=settings.progress),
            accelerator=accelerator, progress_dir=out / "progress" / "vae", metrics=metrics), 1)
        vae = accelerator.unwrap_model(objective).vae
        vae.eval()
        with torch.no_grad():
            means = torch.cat([vae.encode(chunk.to(accelerator.device)).latent_dist.mean.cpu() for chunk in images.split(256)])
        vae.register_to_config(scaling_factor=float(1.0 / means.std()))
        if accelerator.is_main_process:
            _save_part(vae.cpu(), out / "vae")
    vae.eval().requires_grad_(False).to(accelerator.device)
    scale = vae.config.scaling_factor
    with torch.no_grad():
        posteriors = [vae.encode(chunk.to(accelerator.device)).latent_dist for chunk in images.split(256)]
        mean = torch.cat([p.mean.cpu() for p in posteriors]) * scale
        std = torch.cat([p.std.cpu() for p in posteriors]) * scale
        sample = images[:256]
        recon = vae.decode(mean[:256].to(accelerator.device) / scale).sample.cpu()
        record["vae_reconstruction_mse"] = round(float(F.mse_loss(recon, sample)), 5)
    say(accelerator, f"decoder vae: reconstruction MSE {record['vae_reconstruction_mse']} (pixels in [-1, 1])")

    # Phase 2: the denoiser, conditioned on the captions' token states.
    prompt_config = PromptEncoderConfig(text_encoder=settings.text_encoder, max_tokens=settings.max_tokens,
                                        height=settings.size, width=settings.size, steps=settings.steps,
                                        guidance=settings.guidance)
    prompts = MiniLMPrompts(prompt_config)
    unique = sorted(set(captions)) + [""]
    table = torch.cat([prompts(unique[i:i + 256]) for i in range(0, len(unique), 256)])
    which = torch.tensor([unique.index(c) for c in captions])
    empty = len(unique) - 1
    unet = build_unet(settings, prompts.width)
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
    if not accelerator.is_main_process:
        return out
    unet = accelerator.unwrap_model(objective).unet.eval().cpu()
    record["parameters"] = {"vae": sum(p.numel() for p in vae.parameters()),
                            "unet": sum(p.numel() for p in unet.parameters())}
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "text_encoder=None cannot be saved": by design
    sampler = DDIMScheduler.from_config(scheduler.config, steps_offset=1, set_alpha_to_one=False)
    pipeline = StableDiffusionPipeline(
        vae=vae.cpu(), unet=unet, scheduler=sampler, text_encoder=None,
        tokenizer=None, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    staging = out / "progress" / "pipeline"
    shutil.rmtree(staging, ignore_errors=True)
    pipeline.save_pretrained(str(staging))
    for part in ("unet", "scheduler"):
        shutil.rmtree(out / part, ignore_errors=True)
        (staging / part).replace(out / part)
    (staging / "model_index.json").replace(out / "model_index.json")
    write_json_atomic(out / "training.json", record)
    shutil.rmtree(out / "progress", ignore_errors=True)
    write_anybind_file(out, prompt_config)  # written last: marks the decoder complete
    say(accelerator, f"decoder: saved to {out} (vae {record['parameters']['vae'] / 1e6:.2f}M, "
                     f"unet {record['parameters']['unet'] / 1e6:.2f}M parameters)")
    return out
