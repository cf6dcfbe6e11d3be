"""Every stage's settings, as dataclasses whose defaults are the defaults: the CLI reads its
option defaults from here, so they are never written twice (and importing this is light)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BindSettings:
    embed_dim: int = 128  # binding into an existing model: its own; with a space: the space's
    #: pretrained trunks, {modality: "hf:PATH" or "timm:NAME@FILE"}, and how much of each trains
    #: ({modality: "frozen" | "last:N" | "lora[:R]" | "full"}); see anybind.trunks
    trunks: dict = field(default_factory=dict)
    train_trunks: dict = field(default_factory=dict)
    #: a frozen image-text space (hf:PATH of a CLIP directory): its image and text towers, already
    #: aligned, are the space every other modality binds to
    space: str | None = None
    feature_cache: bool = True  # frozen trunks: their outputs computed once per file and kept
    steps: int | None = None  # overrides every modality's default
    batch_size: int | None = None
    lr: float | None = None
    save_every: int = 100
    seed: int = 0
    on_bad_row: str = "skip"  # or "stop"
    progress: bool = True


@dataclass
class AlignSettings:
    steps: int = 150
    batch_size: int = 16
    lr: float = 1e-3
    tokens: int = 4  # soft tokens per attachment
    hidden: int = 1024
    seed: int = 0
    save_every: int = 50
    on_bad_row: str = "skip"
    progress: bool = True


@dataclass
class AlignOutSettings:
    # 150 steps over 360 conversations: requests drawn right 0.95-0.96 (300 over 480: 0.99-1.00)
    # in half the time; the quickstart's 15-minute budget (bench/RESULTS.md).
    steps: int = 150
    batch_size: int = 32
    lr: float = 1e-3
    tokens: int = 4  # k generative tokens
    width: int = 256
    layers: int = 2
    examples: int = 360  # distinct templated conversations (half with images)
    mse_weight: float = 1.0
    # Contrast: the projected conditioning must be nearer its own caption's encoding than any
    # other caption's (cross-entropy over negative distances / temperature), beside the MSE.
    contrast_weight: float = 0.05
    contrast_temperature: float = 0.02
    context: bool = True  # the output projector also reads the conversation before [IMG0]
    request_gate: bool = True  # the [TOK0] gate also reads the state where the answer starts
    guidance: float | None = 5.0  # what the chat draws with (None: the decoder's own default)
    # samples the chat makes of each output, the one nearest the words shown (anybind.chat.best_of)
    candidates: int = 4
    seed: int = 0
    save_every: int = 100
    progress: bool = True


@dataclass
class InstructSettings:
    # steps and conversations for a model that makes one output (or none); a model that makes
    # several trains ``several_outputs_scale`` times as long (0: as many times as it makes
    # outputs), on as many times the conversations (each output needs its own requests; 3 for
    # two outputs, with more histories, raised the multi-turn figures but left a sixth of requests
    # to draw undrawn: bench/RESULTS.md, "instruct: more conversations")
    steps: int = 60
    batch_size: int = 8
    # Adapters on every layer (0; N: the last N): the input projectors train too, so backward
    # runs through the whole LM anyway, and only the adapters' own gradients and merge are added
    # (+25-45% on the stage). On the last 8 alone, a follow-up after plain chat named the wrong label (0.55-0.67
    # made right) and the order the outputs were asked in was not read; at 1e-3 on every layer,
    # wordings seen in training took over ("Can you show me a two?" was spoken); bench/RESULTS.md
    lr: float = 5e-4
    rank: int = 8  # LoRA rank
    alpha: int = 16
    layers: int = 0  # adapters on the LM's last N layers (0: all)
    # every linear layer of those blocks (peft's "all-linear": attention and MLP, not the head);
    # None: peft's choice for the architecture (Llama: q and v only, which left the 120 steps
    # too little room to learn several attachments and follow-ups; bench/RESULTS.md)
    target_modules: tuple[str, ...] | str | None = "all-linear"
    conversations: int = 480
    several_outputs_scale: int = 0
    per_modality: int = 120  # attachments embedded per modality
    mse_weight: float = 1.0
    # The input projectors (align-in trained them) train on too; frozen, backward stops at the
    # first adapted layer instead of running through the whole LM to reach the soft tokens.
    train_projectors: bool = True
    # Each batch runs as this many forward passes over rows of similar length (less padding).
    micro_batches: int = 2
    # The outputs' [TOK] rows and projectors learn at lr * this (0: kept as align-out left them;
    # the adapters learn to keep the states they read where they read them). At the full rate
    # the projector drifts on the few drawings per batch: requests drawn right fell from 0.99
    # to 0.82-0.87. Each output's [TOK0] gate ("make one now?") always trains at the full rate.
    image_output_lr_scale: float = 0.0
    contrast_weight: float = 0.05  # as in align-out: each drawing's conditioning nearest its own caption
    contrast_temperature: float = 0.02
    # After the adapters: each output projector fitted again to the LM's new states for this many
    # steps (0: not; anybind.training.output_refit), batches of refit_batch_size, at refit_lr.
    refit_steps: int = 150
    refit_batch_size: int = 32
    refit_lr: float = 1e-3
    # Then each output's request gate ("does the request ask for it?", on the request's words;
    # anybind.training.asked_gate), fitted on instruct's requests.
    request_gates: bool = True
    request_gate_steps: int = 500
    request_gate_lr: float = 1e-2
    request_gate_weight_decay: float = 0.01
    seed: int = 0
    # Trained this many times (seeds seed, seed + 1, ...) and kept as the mean (anybind.training.soup):
    # the gates are what a seed decides most, and the mean of two held where either one failed
    # (bench/RESULTS.md, "instruct: a soup of seeds"). Each seed costs a whole training.
    seeds: int = 1
    save_every: int = 50
    progress: bool = True
