"""The speech judge of ``anybind eval generate``: log-mel statistics and an SVM.

It is trained on real espeak recordings of the voices the sample world holds out of training
(its test split), never on generated audio, and never on the voices the decoder learned from.
Half of those voices train it; its accuracy on the other half is reported beside every
score it gives (``judge_accuracy_on_real``).
"""

from __future__ import annotations

import numpy as np

from anybind.eval.judge import Judge

RATE = 16_000


class SpeechJudge(Judge):
    mels = 24
    segments = 6  # the mean log-mel of each sixth of the spoken part: how the word moves

    def split(self, manifest, modality):
        """Both halves from the held-out voices: even-numbered voices train, the others are scored."""
        rows = manifest.select("test", has=(modality, "label"))
        voice = [(r.get("meta") or {}).get("voice", r["id"]) for r in rows]
        trains = set(sorted(set(voice))[::2])
        return ([r for r, v in zip(rows, voice) if v in trains], [r for r, v in zip(rows, voice) if v not in trains])

    def features(self, clips) -> np.ndarray:
        import torch
        import torchaudio

        width = self.mels * (2 + self.segments)
        if not clips:
            return np.zeros((0, width), dtype="float32")
        mel = torchaudio.transforms.MelSpectrogram(RATE, n_fft=512, hop_length=160, n_mels=self.mels)
        out = []
        for clip in clips:
            wave = torch.as_tensor(np.asarray(clip.samples, dtype=np.float32))
            if clip.sample_rate != RATE:
                wave = torchaudio.functional.resample(wave[None], clip.sample_rate, RATE)[0]
            log_mel = torch.log(mel(wave) + 1e-6)  # (mels, frames)
            energy = log_mel.mean(0)
            spoken = log_mel[:, energy > energy.max() - 6.0]  # frames within ~26 dB of the loudest
            if spoken.shape[1] < self.segments:
                spoken = log_mel
            parts = [p.mean(1) for p in torch.tensor_split(spoken, self.segments, dim=1)]
            vector = torch.cat([spoken.mean(1), spoken.std(1), *parts])
            out.append((vector - spoken.mean()).numpy())  # loudness removed
        return np.stack(out).astype("float32")

    def key(self, clip) -> bytes:
        return np.asarray(clip.samples, dtype=np.float32).tobytes()
