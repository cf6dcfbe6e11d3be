"""Audio loader, 16 kHz mono tokenizer, and encoder: log-mel -> strided conv patches -> transformer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anybind.errors import InputError
from anybind.modality import EncoderOutput, ModalityEncoder
from anybind.models.trunk_modes import ReferencedTrunk

SAMPLE_RATE = 16_000


@dataclass
class Audio:
    samples: np.ndarray  # (N,) float32 mono
    sample_rate: int


#: Longer audio is cut to its first MAX_SECONDS while reading (the encoder reads a short window).
MAX_SECONDS = 60
#: What libsndfile must find in a file of each suffix it reads.
CONTAINERS = {".wav": ("WAV", "WAVEX", "RF64", "W64"), ".flac": ("FLAC",), ".ogg": ("OGG",)}


def load_audio(path) -> Audio:
    """wav/flac/ogg through soundfile, anything else (mp3, m4a, ...) through PyAV; mixed to mono."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise InputError(path, "empty audio file")
    if path.suffix.lower() in CONTAINERS:
        import soundfile as sf

        try:
            info = sf.info(str(path))
            if info.format not in CONTAINERS[path.suffix.lower()]:  # libsndfile guesses a format even for noise
                raise InputError(path, f"not a {path.suffix[1:].upper()} file (its content reads as {info.format})")
            # A long recording is cut, never read whole: the first MAX_SECONDS are plenty for a clip.
            data, rate = sf.read(str(path), frames=int(min(info.frames, info.samplerate * MAX_SECONDS)),
                                 dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise InputError(path, f"not readable audio ({exc})") from None
        samples = data.mean(axis=1)
    else:
        samples, rate = _decode_with_pyav(path)
    if len(samples) == 0:
        raise InputError(path, "audio has zero length")
    if not np.isfinite(samples).all():
        raise InputError(path, "audio contains NaN or infinite samples")
    if rate < 4000:
        raise InputError(path, f"sample rate {rate} Hz is too low (need at least 4000 Hz)")
    return Audio(samples.astype(np.float32), int(rate))


def _decode_with_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise InputError(path, "has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.rate or SAMPLE_RATE
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks, kept = [], 0
            for frame in container.decode(stream):
                for chunk in resampler.resample(frame):
                    chunks.append(chunk.to_ndarray().reshape(-1))
                    kept += len(chunks[-1])
                if kept >= rate * MAX_SECONDS:  # cut, as for the formats above
                    break
    except InputError:
        raise
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise InputError(path, f"not readable audio ({exc})") from None
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate


NARROW_RATES = (8000, 11025, 12000)  # rates with short resampling kernels from 16 kHz


TEMPO_FFT = 256  # 16 ms frames for the phase vocoder, a quarter of it apart


def time_stretch(wave: torch.Tensor, rate: float, length: int | None = None) -> torch.Tensor:
    """``wave`` (``(..., samples)``) played ``rate`` times as fast at the same pitch (a phase
    vocoder), cut or zero-padded to ``length`` samples if given."""
    import torchaudio

    hop = TEMPO_FFT // 4
    window = torch.hann_window(TEMPO_FFT, device=wave.device)
    spec = torch.stft(wave, TEMPO_FFT, hop, window=window, return_complex=True)
    advance = torch.linspace(0, torch.pi * hop, spec.shape[-2], device=wave.device)[:, None]
    stretched = torchaudio.functional.phase_vocoder(spec, rate, advance)
    out = torch.istft(stretched, TEMPO_FFT, hop, window=window, length=max(2, round(wave.shape[-1] / rate)))
    return out if length is None else nn.functional.pad(out, (0, length - out.shape[-1]))  # a negative pad cuts


@dataclass
class AudioEncoderConfig:
    seconds: float = 1.0  # clips are cropped (centre) or zero-padded to this length
    mels: int = 40
    width: int = 128
    conv_channels: int = 64
    layers: int = 1  # transformer layers over the conv patch tokens
    heads: int = 4
    noise_snr_db: tuple = (5.0, 40.0)  # training-time noise
    speed: tuple = (0.8, 1.25)  # training-time speed (and pitch) change by resampling; (1, 1): off
    #: training only: the share of clips whose tempo alone changes (a phase vocoder: same pitch), by
    #: a factor in ``tempo``. Resampling ties speed to pitch, so a fast low voice was never heard:
    #: held-out voices fast and low were told 0.75 of the time, slow and low 0.94 (bench/RESULTS.md)
    tempo_share: float = 0.5
    tempo: tuple = (0.75, 1.4)
    #: out of training, a clip's summary is the mean of its own and the clip's at these tempos: a
    #: voice faster or slower than the world's is heard at a tempo nearer the world's as well
    #: (bench/RESULTS.md, "audio: heard at three tempos"); (): the clip alone
    test_tempos: tuple = (0.8, 1.25)
    spec_masks: int = 2  # SpecAugment masks of each kind, training only
    #: training only: the share of clips heard as if recorded at a lower rate (resampled to
    #: 8, 11.025 or 12 kHz and back), so that speech without its top band (telephone, 8 kHz files) still reads
    narrowband: float = 0.3
    #: a pretrained trunk (hf:PATH, anybind.trunks): its feature extractor then sets the sampling
    #: rate and features, and train_trunk how much of it trains
    trunk: str = ""
    train_trunk: str = "full"


class AudioEncoder(ReferencedTrunk, ModalityEncoder):
    """(B, samples) 16 kHz -> log-mel (B, M, T) -> conv patches (B, T/8, W) -> transformer;
    or a pretrained trunk's own features and tokens (``trunk``)."""

    Config = AudioEncoderConfig

    def __init__(self, config: AudioEncoderConfig | None = None):
        super().__init__(config or AudioEncoderConfig())
        import torchaudio

        c = self.config
        self.sample_rate = SAMPLE_RATE
        if c.trunk:
            from anybind.trunks import TrunkReference
            from anybind_audio.pretrained import PretrainedAudioTrunk

            self.trunk = PretrainedAudioTrunk(TrunkReference.parse(c.trunk))
            self.sample_rate, c.width = self.trunk.sample_rate, self.trunk.width
            self.setup_trunk(self.trunk.model, self.trunk.blocks, self.trunk.lora_targets)
            return
        self.melspec = torchaudio.transforms.MelSpectrogram(
            SAMPLE_RATE, n_fft=400, win_length=400, hop_length=160, n_mels=c.mels, f_min=20, f_max=7600
        )

        def block(c_in, c_out):
            return [nn.Conv1d(c_in, c_out, 5, padding=2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU()]

        h = c.conv_channels
        # Mel bins as channels; three 2x poolings turn 10 ms frames into 80 ms patch tokens.
        self.patches = nn.Sequential(*block(c.mels, h), nn.MaxPool1d(2), *block(h, h), nn.MaxPool1d(2),
                                     *block(h, c.width), nn.MaxPool1d(2), *block(c.width, c.width))
        layer = nn.TransformerEncoderLayer(c.width, c.heads, dim_feedforward=2 * c.width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)

    @property
    def length(self) -> int:
        return int(round(self.config.seconds * self.sample_rate))

    def preprocess(self, raw: Audio) -> dict[str, torch.Tensor]:
        import torchaudio

        wave = torch.from_numpy(raw.samples)
        if raw.sample_rate != self.sample_rate:
            wave = torchaudio.functional.resample(wave, raw.sample_rate, self.sample_rate)
        wave = wave / wave.abs().max().clamp(min=1e-6) * 0.5  # loudness-normalised
        n = min(len(wave), self.length)
        start = (len(wave) - n) // 2
        out = torch.zeros(self.length)
        out[:n] = wave[start : start + n]
        return {"wave": out, "length": torch.tensor(n)}

    def augment(self, batch):
        """A random speed (``speed``: voices speak slower or faster, and higher or lower), for some
        a tempo of its own (``tempo_share``, ``tempo``: same pitch), placement in the window, gain,
        a lower recording rate for some (``narrowband``), and white or low-passed noise at a
        random SNR."""
        import torchaudio

        wave, length = batch["wave"], batch["length"].clone()
        b, total = wave.shape
        shifted = torch.zeros_like(wave)
        for i in range(b):
            n = int(length[i])
            word = wave[i, :n]
            speed = float(torch.empty(()).uniform_(*self.config.speed))
            if n > 1 and speed != 1.0:
                word = nn.functional.interpolate(word[None, None], size=max(2, min(total, round(n / speed))),
                                                 mode="linear", align_corners=False)[0, 0]
                n = len(word)
                length[i] = n
            if n > 2 * TEMPO_FFT and float(torch.rand(())) < self.config.tempo_share:
                word = time_stretch(word, float(torch.empty(()).uniform_(*self.config.tempo)))[:total]
                n = len(word)
                length[i] = n
            offset = int(torch.randint(0, total - n + 1, ()))
            shifted[i, offset : offset + n] = word
        shifted = shifted * torch.empty(b, 1).uniform_(0.3, 1.5)
        narrow = torch.rand(b) < self.config.narrowband
        chosen = torch.randint(len(NARROW_RATES), (b,))
        for n, rate in enumerate(NARROW_RATES):  # the clips of one rate together: one resampling kernel each way
            rows = narrow & (chosen == n)
            if rows.any():
                down = torchaudio.functional.resample(shifted[rows], SAMPLE_RATE, rate)
                shifted[rows] = torchaudio.functional.resample(down, rate, SAMPLE_RATE)[:, :total]
        noise = torch.randn_like(shifted)
        if torch.rand(()) < 0.5:
            noise = torchaudio.functional.lowpass_biquad(noise, SAMPLE_RATE, float(torch.empty(()).uniform_(500, 4000)))
            noise = noise / noise.std(dim=1, keepdim=True).clamp(min=1e-6)
        power = shifted.pow(2).sum(1, keepdim=True) / length.float().clamp(min=1)[:, None]
        snr = torch.empty(b, 1).uniform_(*self.config.noise_snr_db)
        return {"wave": shifted + noise * (power / 10 ** (snr / 10)).sqrt(), "length": length}

    def _spec_augment(self, mel: torch.Tensor) -> torch.Tensor:
        b, m, t = mel.shape
        keep = torch.ones_like(mel)
        for i in range(b):
            for _ in range(self.config.spec_masks):
                f = int(torch.randint(0, m // 5 + 1, ()))
                f0 = int(torch.randint(0, m - f + 1, ()))
                keep[i, f0 : f0 + f] = 0
                w = int(torch.randint(0, t // 8 + 1, ()))
                t0 = int(torch.randint(0, t - w + 1, ()))
                keep[i, :, t0 : t0 + w] = 0
        return mel * keep

    def forward(self, wave: torch.Tensor, length: torch.Tensor | None = None) -> EncoderOutput:
        if self.referenced:
            return self.trunk(wave, length if length is not None else torch.full((len(wave),), wave.shape[1]))
        if self.training or not self.config.test_tempos:
            tokens = self._tokens(wave)
            return EncoderOutput(tokens=tokens, summary=_summary(tokens))
        # the clip and its tempos in one pass: (1 + tempos) x B rows, the clip's first
        tempos = [time_stretch(wave, rate, wave.shape[-1]) for rate in self.config.test_tempos]
        heard = self._tokens(torch.cat([wave, *tempos]))
        return EncoderOutput(tokens=heard[: len(wave)],
                             summary=_summary(heard).view(1 + len(tempos), len(wave), -1).mean(dim=0))

    def _tokens(self, wave: torch.Tensor) -> torch.Tensor:
        # No per-utterance normalisation: it made echo-y unseen voices collapse in our trials.
        mel = (self.melspec(wave) + 1e-6).log()  # (B, M, T)
        if self.training and self.config.spec_masks:
            mel = self._spec_augment(mel)
        return self.transformer(self.patches(mel).transpose(1, 2))  # (B, T/8, W)


def _summary(tokens: torch.Tensor) -> torch.Tensor:
    """Mean + max over time: a short word is a peak in a mostly silent window."""
    return tokens.mean(dim=1) + tokens.amax(dim=1)
