"""A diffusers Stable Diffusion pipeline behind anybind's decoder interface.

Two kinds of directories load:

* a standard diffusers Stable Diffusion directory (``model_index.json``, ``unet/``,
  ``vae/``, ``scheduler/``, ``text_encoder/``, ``tokenizer/``): its own CLIP text
  encoder gives the conditioning;
* one written by ``anybind train decoder``: the same layout without a text encoder, plus
  ``anybind.json`` naming the sentence encoder whose token states condition it
  (all-MiniLM-L6-v2 by default, padded to a fixed number of tokens).

Either way :meth:`DiffusionDecoder.encode_prompt` returns the ``(batch, tokens, width)``
conditioning and :meth:`DiffusionDecoder.decode` runs the real pipeline on it with
classifier-free guidance, a seed and a number of steps.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from anybind.errors import CheckpointError, DecoderError

ANYBIND_FILE = "anybind.json"
FORMAT = "anybind.decoder.sd"


@dataclass
class PromptEncoderConfig:
    """How a decoder trained by anybind turns text into its conditioning."""

    #: A local Hugging Face encoder directory; empty = the packaged all-MiniLM-L6-v2.
    text_encoder: str = ""
    #: Captions are padded/truncated to this many tokens (the conditioning length).
    max_tokens: int = 16
    height: int = 32
    width: int = 32
    steps: int = 25
    guidance: float = 3.0


class MiniLMPrompts(torch.nn.Module):
    """Token states of a frozen sentence encoder, padded to ``max_tokens``."""

    def __init__(self, config: PromptEncoderConfig):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from anybind.plugins.builtins.text_encoder import packaged_minilm_dir

        hf_logging.disable_progress_bar()

        source = Path(config.text_encoder) if config.text_encoder else packaged_minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(source))
        self.model = AutoModel.from_pretrained(str(source)).eval().requires_grad_(False)
        self.max_tokens = config.max_tokens
        self.width = self.model.config.hidden_size

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(list(texts), padding="max_length", truncation=True,
                               max_length=self.max_tokens, return_tensors="pt")
        device = next(self.model.parameters()).device
        return self.model(**{k: v.to(device) for k, v in batch.items()}).last_hidden_state.float()

    @property
    def cond_shape(self) -> tuple[int, int]:
        """``(tokens, width)`` of the conditioning: what a decoder conditioned on it reads."""
        return (self.max_tokens, self.width)

    def encode_prompt(self, texts: list[str]) -> torch.Tensor:
        """The conditioning of captions, as the decoder it conditions gives it (float32)."""
        return self(list(texts))


#: The prompt encoder's settings, written when a decoder starts training: what its conditioning
#: will be is known before it is trained, so align-out can start beside it.
PROMPTS_FILE = "prompts.json"


def load_prompt_encoder(path, device=None):
    """What align-out and instruct need of a decoder: its prompt encoder, readable as soon as an
    anybind decoder starts training (``prompts.json``); a decoder with its own text encoder (a
    Stable Diffusion checkpoint) is loaded whole."""
    path = Path(path)
    for name in (ANYBIND_FILE, PROMPTS_FILE):
        if (path / name).is_file():
            try:
                meta = json.loads((path / name).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DecoderError(f"{path / name}: unreadable ({exc})") from None
            if "prompts" in meta:
                encoder = MiniLMPrompts(read_prompt_config(meta))
                return encoder if device is None else encoder.to(device)
    return load_decoder(path, device=device)


def write_prompts_file(path: Path, config: PromptEncoderConfig, decoder: str = "sd") -> None:
    from anybind.persistence import write_json_atomic

    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path / PROMPTS_FILE, {"decoder": decoder, "prompts": asdict(config)})


def check_pipeline_dir(path: Path) -> dict:
    """The parsed ``model_index.json`` of a Stable Diffusion directory, or a clear error."""
    if not path.exists():
        raise CheckpointError(f"{path}: decoder directory not found")
    index_file = path / "model_index.json"
    if not path.is_dir() or not index_file.is_file():
        raise DecoderError(f"{path}: not a diffusers pipeline directory (no model_index.json); "
                           "train one with `anybind train decoder` or pass a Stable Diffusion checkpoint")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DecoderError(f"{index_file}: unreadable ({exc})") from None
    kind = index.get("_class_name", "")
    missing = [part for part in ("unet", "vae", "scheduler") if not (path / part).is_dir()]
    if "XL" in kind or "StableDiffusion" not in kind or missing:
        why = f"missing {', '.join(missing)}" if missing else f"it is a {kind or 'pipeline of unknown class'}"
        raise DecoderError(f"{path}: not a Stable Diffusion (1.x/2.x-style) pipeline: {why}")
    return index


class DiffusionDecoder:
    """Conditioning sequence -> images, through a diffusers ``StableDiffusionPipeline``."""

    modality = "image"

    def __init__(self, pipeline, prompts=None, config: PromptEncoderConfig | None = None, path: Path | None = None):
        self.pipeline = pipeline
        self.prompts = prompts  # None: the pipeline's own text encoder
        self.config = config or PromptEncoderConfig(
            height=pipeline.unet.config.sample_size * pipeline.vae_scale_factor,
            width=pipeline.unet.config.sample_size * pipeline.vae_scale_factor,
            steps=30, guidance=7.5,
        )
        self.path = path
        self._negative = None
        pipeline.set_progress_bar_config(disable=True)

    # -- shape and placement -------------------------------------------------------
    @property
    def cond_shape(self) -> tuple[int, int]:
        if self.prompts is not None:
            return self.prompts.cond_shape
        return (self.pipeline.tokenizer.model_max_length, self.pipeline.text_encoder.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.pipeline.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.unet.dtype

    def to(self, device=None, dtype=None) -> "DiffusionDecoder":
        self.pipeline.to(device=device, dtype=dtype)
        if self.prompts is not None and device is not None:
            self.prompts.to(device)
        return self

    # -- conditioning --------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, texts: list[str]) -> torch.Tensor:
        """``(len(texts), tokens, width)`` conditioning of captions (float32)."""
        if self.prompts is not None:
            return self.prompts.encode_prompt(texts)
        embeds, _ = self.pipeline.encode_prompt(list(texts), self.device, 1, False)
        return embeds.float()

    def negative(self) -> torch.Tensor:
        """The unconditional (empty caption) conditioning used for guidance."""
        if self._negative is None:
            self._negative = self.encode_prompt([""])
        return self._negative

    def check_cond(self, cond: torch.Tensor, what: str = "conditioning") -> None:
        expected = self.cond_shape
        if cond.dim() != 3 or tuple(cond.shape[1:]) != expected:
            got = "x".join(str(s) for s in cond.shape[1:]) if cond.dim() == 3 else str(tuple(cond.shape))
            where = f" at {self.path}" if self.path else ""
            raise DecoderError(f"{what} is {got} but the decoder{where} expects {expected[0]}x{expected[1]} "
                               "(tokens x width): the projector was trained for another decoder; "
                               "run `anybind train align-out` against this one")

    # -- generation ----------------------------------------------------------------
    def sampling(self, cond, negative, guidance, steps, seed, generator):
        """What a decode runs with: the conditioning checked, then ``(guidance, steps, negative
        conditioning for the batch, generator)``, each the decoder's default unless given."""
        self.check_cond(cond)
        neg = self.negative() if negative is None else negative
        if generator is None:
            generator = torch.Generator(device="cpu").manual_seed(seed)
        return (self.config.guidance if guidance is None else guidance, self.config.steps if steps is None else steps,
                neg.expand(cond.shape[0], -1, -1) if neg.shape[0] == 1 else neg, generator)

    @torch.no_grad()
    def decode(self, cond: torch.Tensor, *, negative: torch.Tensor | None = None, guidance: float | None = None,
               steps: int | None = None, seed: int = 0, generator: torch.Generator | None = None):
        """Images (PIL) for a ``(batch, tokens, width)`` conditioning; one seed for the batch."""
        guidance, steps, neg, generator = self.sampling(cond, negative, guidance, steps, seed, generator)
        out = self.pipeline(
            prompt_embeds=cond.to(self.device, self.dtype),
            negative_prompt_embeds=neg.to(self.device, self.dtype),
            guidance_scale=guidance, num_inference_steps=steps, generator=generator,
            height=self.config.height, width=self.config.width, output_type="pil",
        )
        return out.images

    def generate(self, prompts: list[str], **options):
        """Images straight from captions, through the decoder's own text encoder."""
        return self.decode(self.encode_prompt(prompts), **options)


def load_decoder(path, device=None, dtype=None) -> DiffusionDecoder:
    """Load a Stable Diffusion directory (ours, or any local diffusers SD checkpoint)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from anybind.models.backbone import default_device, default_dtype

    path = Path(path)
    index = check_pipeline_dir(path)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    ours = path / ANYBIND_FILE
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    if ours.is_file():
        config = read_prompt_config(json.loads(ours.read_text()))
        pipeline = StableDiffusionPipeline.from_pretrained(
            str(path), text_encoder=None, tokenizer=None, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        decoder = DiffusionDecoder(pipeline, MiniLMPrompts(config), config, path)
    else:
        if index.get("text_encoder", [None])[0] is None or not (path / "tokenizer").is_dir():
            raise DecoderError(f"{path}: a Stable Diffusion directory needs text_encoder/ and tokenizer/ "
                               f"(or an {ANYBIND_FILE} naming its prompt encoder)")
        pipeline = StableDiffusionPipeline.from_pretrained(
            str(path), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        decoder = DiffusionDecoder(pipeline, path=path)
    return decoder.to(device, dtype)


def write_anybind_file(path: Path, config: PromptEncoderConfig, decoder: str = "sd", format: str = FORMAT,
                       **extra) -> None:
    """``anybind.json``: which decoder the directory is for, and how it encodes prompts."""
    from anybind.persistence import write_json_atomic

    write_json_atomic(path / ANYBIND_FILE, {"format": format, "decoder": decoder, "prompts": asdict(config), **extra})


def read_prompt_config(meta: dict) -> PromptEncoderConfig:
    fields = PromptEncoderConfig.__dataclass_fields__
    return PromptEncoderConfig(**{k: v for k, v in meta.get("prompts", {}).items() if k in fields})
