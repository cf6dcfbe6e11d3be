"""Waveform <-> log-mel spectrogram: what the audio decoder's diffusion works on, and its vocoder.

A clip is a fixed window of ``frames`` mel frames (0.7 s at the defaults: the sample world's
spoken digits last 0.1-0.7 s), its log-mel values mapped to [-1, 1] so the autoencoder sees
what an image autoencoder sees. The vocoder is Griffin-Lim: the mel's power spectrogram back
through ``InverseMelScale``'s least squares, then phase by iteration (torchaudio, no trained
weights). ``bench/RESULTS.md`` has what the round trip keeps (the judge's accuracy on real
speech, and on the same speech after mel -> vocoder).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

SAMPLE_RATE = 16_000


@dataclass
class MelConfig:
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    win_length: int = 704
    hop_length: int = 352  # 22 ms: 32 frames are 0.70 s
    n_mels: int = 40
    frames: int = 32
    f_min: float = 40.0
    f_max: float = 8000.0
    #: log-mel (natural log of power + 1e-5) in [low, high] is mapped linearly to [-1, 1]
    low: float = -11.5
    high: float = 3.5
    griffin_lim_iters: int = 32

    @property
    def samples(self) -> int:
        return self.frames * self.hop_length

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "MelConfig":
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


class MelCodec:
    """``encode``: mono waveforms at any rate -> ``(B, 1, n_mels, frames)`` in [-1, 1];
    ``decode``: that back to ``(B, samples)`` waveforms at ``sample_rate`` (Griffin-Lim)."""

    def __init__(self, config: MelConfig | None = None):
        import torchaudio

        self.config = c = config or MelConfig()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate, n_fft=c.n_fft, win_length=c.win_length, hop_length=c.hop_length,
            f_min=c.f_min, f_max=c.f_max, n_mels=c.n_mels, power=2.0, center=True)
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=c.n_fft // 2 + 1, n_mels=c.n_mels, sample_rate=c.sample_rate, f_min=c.f_min, f_max=c.f_max)
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=c.n_fft, win_length=c.win_length, hop_length=c.hop_length, power=2.0, n_iter=c.griffin_lim_iters)

    def window(self, samples: np.ndarray, rate: int) -> torch.Tensor:
        """One clip resampled to ``sample_rate`` and centred in (or cut to) the model's window."""
        import torchaudio

        c = self.config
        wave = torch.as_tensor(np.asarray(samples, dtype=np.float32))
        if rate != c.sample_rate:
            wave = torchaudio.functional.resample(wave[None], rate, c.sample_rate)[0]
        if len(wave) >= c.samples:
            start = (len(wave) - c.samples) // 2
            return wave[start:start + c.samples]
        pad = c.samples - len(wave)
        return torch.nn.functional.pad(wave, (pad // 2, pad - pad // 2))

    def encode(self, waves: torch.Tensor) -> torch.Tensor:
        """``(B, samples)`` at ``sample_rate`` -> ``(B, 1, n_mels, frames)`` in [-1, 1]."""
        c = self.config
        log_mel = torch.log(self.mel(waves)[..., : c.frames] + 1e-5)
        return ((log_mel - c.low) / (c.high - c.low) * 2 - 1).clamp(-1, 1)[:, None]

    @torch.no_grad()
    def decode(self, mels: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """``(B, 1, n_mels, frames)`` in [-1, 1] -> ``(B, samples)`` waveforms, peak-normalised to 0.5."""
        c = self.config
        log_mel = (mels[:, 0].float().clamp(-1, 1) + 1) / 2 * (c.high - c.low) + c.low
        power = (log_mel.exp() - 1e-5).clamp(min=0)
        spectrum = self.inverse_mel(power).clamp(min=0)
        # Griffin-Lim starts from random phases: seeded, so one seed gives one waveform.
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            waves = self.griffin_lim(spectrum)
        finally:
            torch.random.set_rng_state(state)
        waves = torch.nn.functional.pad(waves, (0, max(0, c.samples - waves.shape[-1])))[:, : c.samples]
        peak = waves.abs().amax(dim=-1, keepdim=True).clamp(min=1e-6)
        return waves / peak * 0.5
