"""Audio trunks from local transformers checkpoints (``hf:PATH``): AST, wav2vec2 / HuBERT, the
Whisper encoder, CLAP's audio model. The checkpoint's feature extractor prepares the audio (its
sampling rate and features); the trunk's tokens and pooled summary go to the tower's head."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from anybind.errors import CheckpointError
from anybind.modality import EncoderOutput
from anybind.models.trunk_modes import attention_targets, block_list
from anybind.trunks import TrunkReference, load_auto_model

AUDIO_INPUTS = ("input_values", "input_features")


class PretrainedAudioTrunk(nn.Module):
    """waves (B, samples) at the checkpoint's rate -> its tokens, mean-pooled (or its own pooler)."""

    def __init__(self, reference: TrunkReference):
        super().__init__()
        from transformers import AutoFeatureExtractor

        if reference.scheme != "hf":
            raise CheckpointError(f"{reference}: an audio trunk is a local transformers directory (hf:PATH)")
        path = Path(reference.name)
        model = load_auto_model(path, "audio")
        config = model.config
        if hasattr(model, "audio_model"):  # CLAP: its audio half
            audio = model.audio_model
        elif getattr(config, "is_encoder_decoder", False):  # Whisper: its encoder
            audio = model.get_encoder()
        else:
            audio = model
        self.inputs = [p for p in inspect.signature(audio.forward).parameters if p in AUDIO_INPUTS + ("attention_mask", "is_longer")]
        if not any(p in AUDIO_INPUTS for p in self.inputs):
            raise CheckpointError(f"{path}: a {config.model_type!r} model reads no audio; give an audio checkpoint "
                                  "(AST, wav2vec2, HuBERT, Whisper, CLAP, ...) as the audio trunk")
        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: has no feature extractor to prepare audio with "
                                  f"(preprocessor_config.json): {exc}") from None
        self.sample_rate = int(self.extractor.sampling_rate)
        self.model = audio.eval()
        self.width = int(getattr(audio.config, "hidden_size", None) or audio.config.d_model)
        self.blocks = block_list(audio)
        self.lora_targets = attention_targets(audio)

    def forward(self, wave: torch.Tensor, length: torch.Tensor) -> EncoderOutput:
        waves = [w[: int(n)].float().cpu().numpy() for w, n in zip(wave, length)]
        features = self.extractor(waves, sampling_rate=self.sample_rate, return_tensors="pt", padding=True)
        out = self.model(**{k: v.to(wave.device) for k, v in features.items() if k in self.inputs})
        tokens = out.last_hidden_state
        summary = getattr(out, "pooler_output", None)
        return EncoderOutput(tokens=tokens, summary=summary if summary is not None and summary.dim() == 2 else tokens.mean(1))
