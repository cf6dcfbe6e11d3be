"""Image trunks from checkpoints: a local transformers vision model (``hf:PATH``: CLIP or SigLIP
vision, ViT, DINOv2, ConvNeXt, ...) or a timm architecture with a local weights file
(``timm:NAME@FILE``). The checkpoint says how images are prepared (size, mean, std)."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from anybind.errors import CheckpointError
from anybind.modality import EncoderOutput
from anybind.models.trunk_modes import attention_targets, block_list
from anybind.trunks import TrunkReference, load_auto_model


def _tokens(features: torch.Tensor) -> torch.Tensor:
    """(B, N, W) as is; a convnet's (B, C, H, W) map as (B, H*W, C) tokens."""
    return features.flatten(2).transpose(1, 2) if features.dim() == 4 else features


class PretrainedImageTrunk(nn.Module):
    """pixels (B, 3, S, S) -> the checkpoint's tokens, with its own pooled summary.

    ``projection`` (CLIP) ends the summary in the checkpoint's image-text space (its
    ``visual_projection``), so a frozen CLIP space is used as it was trained."""

    def __init__(self, reference: TrunkReference, projection: bool = False):
        super().__init__()
        self.reference = reference
        self.projection = None
        if reference.scheme == "hf":
            self._load_hf(Path(reference.name), projection)
        else:
            self._load_timm(reference.name, Path(reference.file))
        self.blocks = block_list(self.model)
        self.lora_targets = attention_targets(self.model)

    def _load_hf(self, path: Path, projection: bool) -> None:
        from transformers import AutoImageProcessor

        model = load_auto_model(path, "vision")
        vision = getattr(model, "vision_model", model)  # CLIPModel / SiglipModel: their vision half
        if "pixel_values" not in inspect.signature(vision.forward).parameters:
            raise CheckpointError(f"{path}: a {model.config.model_type!r} model reads no images; give an image checkpoint "
                                  "(CLIP/SigLIP, ViT, DINOv2, ConvNeXt, ...) as the image trunk")
        try:
            processor = AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: has no image processor to prepare images with "
                                  f"(preprocessor_config.json): {exc}") from None
        size = getattr(processor, "crop_size", None) or processor.size
        self.image_size = int(size.get("height") or size.get("shortest_edge"))
        self.mean, self.std = tuple(processor.image_mean), tuple(processor.image_std)
        self.model = vision.eval()
        hidden = getattr(vision.config, "hidden_size", None) or vision.config.hidden_sizes[-1]
        self.width = int(hidden)
        if projection:
            if getattr(model, "visual_projection", None) is None:
                raise CheckpointError(f"{path}: has no visual_projection into an image-text space "
                                      "(--space takes a CLIP directory)")
            self.projection = model.visual_projection
            self.width = int(self.projection.out_features)
        self.kind = "hf"

    def _load_timm(self, name: str, file: Path) -> None:
        import timm

        if not file.is_file():
            raise CheckpointError(f"{file}: no such weights file (timm:{name}@FILE)")
        if file.suffix != ".safetensors":
            raise CheckpointError(f"{file}: timm weights must be a .safetensors file (pickles are never loaded)")
        from safetensors.torch import load_file

        try:
            model = timm.create_model(name, pretrained=False, num_classes=0)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"timm:{name}: not an architecture timm knows ({exc})") from None
        # loaded strictly, as timm's pretrained_cfg_overlay=dict(file=...) would but without its
        # lenience: a file of another architecture is an error, not a half-random trunk
        wanted = set(model.state_dict())  # a classifier the file has and num_classes=0 dropped is left out
        state = {k: v for k, v in load_file(str(file)).items() if k in wanted or not k.startswith(("head.", "fc.", "classifier."))}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{file}: not weights of timm's {name!r} ({str(exc).splitlines()[0][:200]}; "
                                  f"{str(exc).splitlines()[1].strip()[:200] if len(str(exc).splitlines()) > 1 else ''})") from None
        data = timm.data.resolve_model_data_config(model)
        self.image_size = int(data["input_size"][-1])
        self.mean, self.std = tuple(data["mean"]), tuple(data["std"])
        self.model, self.width, self.kind = model.eval(), int(model.num_features), "timm"

    def forward(self, pixels: torch.Tensor) -> EncoderOutput:
        if self.kind == "timm":
            features = self.model.forward_features(pixels)
            return EncoderOutput(tokens=_tokens(features), summary=self.model.forward_head(features, pre_logits=True))
        out = self.model(pixel_values=pixels)
        summary = getattr(out, "pooler_output", None)
        if summary is not None and summary.dim() != 2:
            summary = summary.flatten(1)
        if self.projection is not None:
            summary = self.projection(summary)
        return EncoderOutput(tokens=_tokens(out.last_hidden_state), summary=summary)
