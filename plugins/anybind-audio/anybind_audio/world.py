"""The audio part of the sample world: digit words spoken by espeak-ng in many voices.

Every espeak-ng voice variant (m1..m7, f1..f5, croak, whisper, named voices, ...) speaks
all ten words with a random English accent, speed, pitch and loudness, plus light noise.
A fixed, seeded set of variants is held out: the test split is voices never heard in training.

The ``ood`` variant speaks with those held-out voices only, at speeds and pitches outside
the training ranges, over coloured noise, saved as FLAC, Ogg Vorbis, MP3 or WAV at 8 to
44.1 kHz: containers, rates and delivery that training never heard.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from anybind.errors import AnybindError

ACCENTS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
HELD_OUT_VARIANTS = 20
TAKES_PER_VARIANT = {"train": 4, "test": 2}
SAMPLE_RATE = 16_000


def espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise AnybindError(
            "the audio part of the sample world needs espeak-ng: apt-get install -y espeak-ng "
            "(or `anybind install audio` as root), or build the world without it: --modality image ..."
        )
    return exe


def voice_variants() -> list[str]:
    out = subprocess.run([espeak(), "--voices=variant"], capture_output=True, text=True, check=True).stdout
    # The file column ("!v/NAME") is not always second to last: some lines list other languages after it.
    names = [t.removeprefix("!v/") for line in out.splitlines()[1:] for t in line.split() if t.startswith("!v/")]
    return sorted({n for n in names if " " not in n})


def split_by_voice(variants: list[str], rng: np.random.Generator, held_out: int) -> dict[str, list[str]]:
    order = list(rng.permutation(variants))
    return {"test": sorted(order[:held_out]), "train": sorted(order[held_out:])}


def _synthesise(text: str, voice: str, speed: int, pitch: int, amplitude: int, ssml: bool = False) -> np.ndarray | None:
    import soundfile as sf

    cmd = [espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude), "--stdout"]
    proc = subprocess.run(cmd + (["-m"] if ssml else []) + [text], capture_output=True)
    if proc.returncode != 0 or not proc.stdout:
        return None
    return sf.read(io.BytesIO(proc.stdout), dtype="float32")[0]


def _active_frames(samples: np.ndarray, hop: int) -> np.ndarray:
    """Indices of 10 ms frames that are not silence."""
    threshold = 1e-3 * max(float(np.abs(samples).max()), 1e-6) + 1e-4
    n = len(samples) // hop
    return np.nonzero(np.abs(samples[: n * hop]).reshape(n, hop).max(axis=1) > threshold)[0]


def _speak(words: list[str], voice: str, speed: int, pitch: int, amplitude: int) -> list[np.ndarray] | None:
    """All words in one espeak-ng call, separated by SSML pauses, then cut at the pauses.

    One process per voice instead of one per word (about 10x faster); falls back to one
    call per word when the pauses cannot be found. Returns 22.05 kHz clips trimmed of silence.
    """
    hop = 22050 // 100
    text = "<speak>" + '<break time="500ms"/>'.join(words) + "</speak>"
    samples = _synthesise(text, voice, speed, pitch, amplitude, ssml=True)
    active = _active_frames(samples, hop) if samples is not None else np.zeros(0, int)
    if len(active):
        gaps = np.diff(active) - 1  # silent frames between consecutive active frames
        cuts = np.sort(np.argsort(gaps)[::-1][: len(words) - 1])
        if len(cuts) == len(words) - 1 and gaps[cuts].min() >= 20:  # every pause >= 200 ms
            starts = np.r_[active[0], active[cuts + 1]]
            ends = np.r_[active[cuts], active[-1]] + 1
            return [samples[s * hop : e * hop] for s, e in zip(starts, ends)]
    clips = []
    for word in words:
        single = _synthesise(word, voice, speed, pitch, amplitude)
        if single is None:
            return None
        frames = _active_frames(single, hop)
        clips.append(single[frames[0] * hop : (frames[-1] + 1) * hop] if len(frames) else single)
    return clips


#: (suffix, soundfile format, sample rate) of the out-of-distribution recordings, in turn.
OOD_CONTAINERS = ((".flac", "FLAC", 8000), (".ogg", "OGG", 11025), (".mp3", "MP3", 22050), (".wav", "WAV", 44100),
                  (".flac", "FLAC", 32000), (".mp3", "MP3", 16000))


def held_out_voices(builder) -> dict[str, list[str]]:
    """The voice variants of each split; seeded on its own, so the ood variant holds out the same ones."""
    held_out = 5 if builder.small else HELD_OUT_VARIANTS
    return split_by_voice(voice_variants(), np.random.default_rng(builder.seed + 7), held_out)


#: How a caption of a spoken digit reads: what a decoder of speech is asked with. Each clip's
#: own caption (its row's ``text``) is one of SPOKEN_CAPTIONS, as each image's is worded in one of
#: several ways: a decoder trained on varied wordings reads a caption's meaning, not one exact
#: token sequence, which is what a chat model's projected conditioning needs (bench/RESULTS.md).
CAPTION = "the spoken word {label}"
SPOKEN_CAPTIONS = (CAPTION, "someone saying {label}", "a voice saying the number {label}", "the word {label}, spoken aloud",
                   "{label}, said out loud", "a recording of the word {label}")


def build(builder) -> None:
    builder.captions["audio"] = CAPTION
    if builder.variant == "ood":
        return build_ood(builder)
    import soundfile as sf
    import torch
    import torchaudio

    rng = builder.np_rng
    resample = torchaudio.transforms.Resample(22050, SAMPLE_RATE)
    splits = held_out_voices(builder)
    if builder.small:
        splits["train"] = splits["train"][:20]
    jobs = []
    for split, names in splits.items():
        takes = 1 if builder.small else TAKES_PER_VARIANT[split]
        for variant in names:
            for take in range(takes):
                accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
                jobs.append((split, variant, take, f"{accent}+{variant}", int(rng.integers(110, 241)),
                             int(rng.integers(15, 86)), int(rng.integers(70, 151)), float(rng.uniform(20, 45))))
    words = list(builder.labels)
    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2))) as pool:
        spoken = list(pool.map(lambda j: _speak(words, *j[3:7]), jobs))
    for (split, variant, take, voice, speed, pitch, amplitude, snr), clips in zip(jobs, spoken):
        if clips is None:
            continue
        for word, clip in zip(words, clips):
            wave = resample(torch.from_numpy(clip)[None])[0].numpy()
            wave = wave / max(float(np.abs(wave).max()), 1e-6) * 0.5
            power = float(np.mean(wave**2))
            wave = wave + rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), len(wave)).astype(np.float32)
            path = builder.path("audio", f"{split}/{variant}_{take}_{word}.wav")
            sf.write(path, wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
            text = SPOKEN_CAPTIONS[(take + len(variant)) % len(SPOKEN_CAPTIONS)].format(label=word)
            builder.add("audio", path, label=word, split=split, text=text, voice=voice, speed=speed, pitch=pitch)


def coloured_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink or brown noise (power falling as 1/f or 1/f^2), unit variance."""
    spectrum = rng.normal(size=n // 2 + 1) + 1j * rng.normal(size=n // 2 + 1)
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    noise = np.fft.irfft(spectrum / f ** (0.5 if rng.random() < 0.5 else 1.0), n)
    return (noise / (noise.std() + 1e-9)).astype(np.float32)


def build_ood(builder) -> None:
    """Held-out voices at extreme speeds and pitches, over coloured noise, in other containers and rates."""
    import soundfile as sf
    import torch
    import torchaudio

    rng = builder.np_rng
    words = list(builder.labels)
    jobs = []
    for variant in held_out_voices(builder)["test"]:
        accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
        speed = int(rng.integers(85, 110)) if rng.random() < 0.5 else int(rng.integers(241, 281))
        pitch = int(rng.integers(2, 15)) if rng.random() < 0.5 else int(rng.integers(86, 100))
        jobs.append((variant, f"{accent}+{variant}", speed, pitch, int(rng.integers(60, 160))))
    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2))) as pool:
        spoken = list(pool.map(lambda j: _speak(words, *j[1:]), jobs))
    count = 0
    for (variant, voice, speed, pitch, _), clips in zip(jobs, spoken):
        for word, clip in zip(words, clips or []):
            suffix, fmt, rate = OOD_CONTAINERS[count % len(OOD_CONTAINERS)]
            count += 1
            wave = torchaudio.functional.resample(torch.from_numpy(clip)[None], 22050, rate)[0].numpy()
            wave = wave / max(float(np.abs(wave).max()), 1e-6) * 0.5
            snr = float(rng.uniform(12, 25))
            wave = wave + coloured_noise(len(wave), rng) * np.sqrt(float(np.mean(wave**2)) / 10 ** (snr / 10))
            path = builder.path("audio", f"ood/{variant}_{word}{suffix}")
            sf.write(path, np.clip(wave, -1, 1).astype(np.float32), rate, format=fmt)
            builder.add("audio", path, label=word, split="test", voice=voice, speed=speed, pitch=pitch, rate=rate,
                        snr=round(snr, 1))
