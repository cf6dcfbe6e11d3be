"""The sample world: real data for every installed modality, plus a manifest (:mod:`anybind.data.manifest`).

The world is built around sklearn's 1,797 real handwritten digits, with digits printed in
the training font families added to the training split (:mod:`anybind.data.printed`): type
as well as handwriting, so that a tower learns a digit's shape and not one hand. Core provides the
digits, their held-out split and the captions; each modality plugin writes its own
part through the ``world`` factory of its :class:`~anybind.specs.ModalitySpec`
(``world(builder)``), attaching files either to one digit (an instance pair, e.g. a video
of *that* seven) or to a class label (e.g. the word "seven" spoken).

The ``ood`` variant (``build_world(..., variant="ood")``) is an evaluation set made
differently: digits printed in font families training never used, every row held out, and
each plugin writes its part in styles of its own that training never showed (``builder.variant``).

Its ``world.json`` says everything the stages need to know about digits in words (see
:mod:`anybind.data.manifest`); this is the only module that knows them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from anybind.data.manifest import SPLITS, write_jsonl
from anybind.errors import InputError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "a handwritten {word}",
    "the digit {digit}",
    "a handwritten number {word}",
    "the number {word}, written by hand",
    "a picture of the digit {word}",
    "a scanned {word}",
)
PRINTED_TEMPLATES = (
    "a printed {word}",
    "the digit {digit} in print",
    "a typed number {word}",
    "the number {word}, printed",
    "a picture of the printed digit {word}",
    "a {word} set in type",
)
VARIANTS = ("sample", "ood")
PROMPT_TEMPLATE = "a handwritten {label}"
#: What ``eval chat`` asks about each held-out attachment, and how align-in answers it.
QUESTION = "Which digit is this?"
ANSWER_TEMPLATE = "It is the digit {label}."
#: Other ways to ask QUESTION (conversations in the instruct stage).
QUESTIONS = ("Which digit is this?", "What digit is this?", "Which number is this?", "What number does this show?")
#: The quickstart's demo: a spoken digit, a follow-up that draws it, then a sentence and every
#: output the chat model makes ("{verbs}": "draw it", or "draw it and say it" with a decoder of
#: speech), then speech alone (a turn's "needs": the output modalities it asks for).
DEMO = (
    {"prompt": "Which digit is spoken here?", "attach": {"modality": "audio", "label": "seven"}},
    {"prompt": "Now draw it.", "needs": ["image"]},
    {"prompt": "Write one sentence about the number four, then {verbs}."},
    {"prompt": "Say the number two.", "needs": ["audio"]},
)


@dataclass
class Digits:
    """Digits as ink: ``images`` (N, 8, 8) in [0, 1], ``labels`` (N,) ints, ``splits`` (N,); for a
    printed digit, ``glyphs[i]`` is also its (32, 32) print (``None`` for handwriting)."""

    images: np.ndarray
    labels: np.ndarray
    splits: list[str]
    glyphs: list | None = None

    def __post_init__(self):
        if self.glyphs is None:
            self.glyphs = [None] * len(self.labels)

    def printed(self, index: int) -> bool:
        return self.glyphs[index] is not None

    def __len__(self) -> int:
        return len(self.labels)

    def word(self, index: int) -> str:
        return DIGIT_WORDS[int(self.labels[index])]


def load_digits(limit: int | None = None, test_fraction: float = 0.2) -> Digits:
    """sklearn's digits; the last ``test_fraction`` of the file is held out."""
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    images = (data.images / 16.0).astype(np.float32)
    labels = data.target.astype(np.int64)
    n = len(labels)
    # A contiguous tail, not a shuffle: neighbouring rows come from the same collection
    # batch, so this keeps near-duplicates out of the held-out split.
    cut = int(round(n * (1 - test_fraction)))
    splits = ["train" if i < cut else "test" for i in range(n)]
    if limit is not None and limit < n:
        keep = np.r_[np.linspace(0, cut - 1, max(1, int(limit * (1 - test_fraction)))).astype(int),
                     np.linspace(cut, n - 1, max(1, int(limit * test_fraction))).astype(int)]
        images, labels, splits = images[keep], labels[keep], [splits[i] for i in keep]
    return Digits(images, labels, splits)


def _printed(families: tuple[str, ...], per_font: int, fonts: int | None, rng, split: str) -> Digits:
    from anybind.data.printed import ink_grid, printed_digits

    glyphs, labels = printed_digits(families, per_font, rng, fonts)
    grids = np.stack([ink_grid(g) for g in glyphs]).astype(np.float32)
    return Digits(grids, np.array(labels, dtype=np.int64), [split] * len(labels), glyphs)


def with_printed(digits: Digits, per_font: int, fonts: int | None, seed: int) -> Digits:
    """``digits`` plus every digit printed in the training font families, in the training split
    (the held-out split stays handwriting: the sample split's figures keep their meaning)."""
    from anybind.data.printed import TRAIN_FAMILIES

    printed = _printed(TRAIN_FAMILIES, per_font, fonts, np.random.default_rng(seed + 1), "train")
    return Digits(np.concatenate([digits.images, printed.images]), np.r_[digits.labels, printed.labels],
                  digits.splits + printed.splits, digits.glyphs + printed.glyphs)


def ood_digits(per_font: int, fonts: int | None, seed: int) -> Digits:
    """Digits printed in the font families the training world never used; every one held out."""
    from anybind.data.printed import OOD_FAMILIES

    return _printed(OOD_FAMILIES, per_font, fonts, np.random.default_rng(seed + 2), "test")


class WorldBuilder:
    """What a plugin's ``world(builder)`` factory gets: the digits and where to write."""

    def __init__(self, root: Path, digits: Digits, seed: int = 0, small: bool = False, variant: str = "sample"):
        self.root = Path(root)
        self.digits = digits
        self.seed = seed
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        #: True for quick builds (tests): plugins should write fewer variants.
        self.small = small
        #: "sample" (train and held-out) or "ood" (held out only, made in other styles than training saw).
        self.variant = variant
        self.labels = list(DIGIT_WORDS)
        #: a plugin may say how a caption of its modality's samples reads (``world.json``'s ``captions``)
        self.captions: dict[str, str] = {}
        #: and how a new tower should read them, as encoder settings (``world.json``'s ``encoders``)
        self.encoders: dict[str, dict] = {}
        self._digit_rows: list[dict[str, Any]] = []
        for i in range(len(digits)):
            word = digits.word(i)
            templates = PRINTED_TEMPLATES if digits.printed(i) else CAPTION_TEMPLATES
            template = templates[i % len(templates)]
            self._digit_rows.append(
                {
                    "id": f"d{i:05d}",
                    "split": digits.splits[i],
                    "label": word,
                    "text": template.format(word=word, digit=int(digits.labels[i])),
                }
            )
        self._class_rows: list[dict[str, Any]] = []

    def path(self, modality: str, name: str) -> Path:
        """Absolute path for a file of ``modality`` named ``name`` (folders created)."""
        path = self.root / modality / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def attach(self, index: int, modality: str, path: Path) -> None:
        """Attach a file to digit ``index``: it is paired with that digit's image."""
        self._digit_rows[index][modality] = path.relative_to(self.root).as_posix()

    def write_per_digit(self, modality: str, suffix: str, write) -> None:
        """Call ``write(path, pixels, rng)`` for every digit and attach each file to its digit."""
        for i in range(len(self.digits)):
            path = self.path(modality, f"d{i:05d}{suffix}")
            write(path, self.digits.images[i], self.np_rng)
            self.attach(i, modality, path)

    def add(self, modality: str, path: Path, label: str, split: str, text: str | None = None, **meta: Any) -> None:
        """Add a file paired by class label only (e.g. a spoken digit word), with its caption
        ``text`` if given; ``meta`` is kept as-is."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        row_id = f"{modality[0]}{len(self._class_rows):05d}"
        self._class_rows.append(
            {"id": row_id, "split": split, "label": label, modality: path.relative_to(self.root).as_posix(),
             **({"text": text} if text else {}), **({"meta": meta} if meta else {})}
        )

    def rows(self) -> list[dict[str, Any]]:
        return self._digit_rows + self._class_rows


def build_world(
    root: Path | str,
    modalities: Iterable[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    small: bool = False,
    progress: bool = True,
    variant: str = "sample",
) -> Path:
    """Write the sample world (or its ``ood`` variant) for the installed (or named) modalities;
    return the manifest path."""
    from tqdm.auto import tqdm

    from anybind import plugins
    from anybind.persistence import write_json_atomic
    from anybind.specs import resolve

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    installed = plugins.modalities()
    names = list(modalities) if modalities is not None else [n for n, s in installed.items() if s.world]
    for name in names:
        spec = plugins.get_modality(name)
        if spec.world is None:
            raise InputError(root, f"the {name} plugin ({plugins.modality_owner(name)}) does not build sample-world data")
    if variant not in VARIANTS:
        raise InputError(root, f"unknown world variant {variant!r} (known: {', '.join(VARIANTS)})")
    fonts = 3 if small else None
    digits = with_printed(load_digits(limit), 1 if small else 2, fonts, seed) if variant == "sample" \
        else ood_digits(1, fonts, seed)
    builder = WorldBuilder(root, digits, seed=seed, small=small, variant=variant)
    bar = tqdm(names, desc="world", unit="modality", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        resolve(installed[name].world, what=f"world builder of {name!r}")(builder)
    manifest = root / "manifest.jsonl"
    write_jsonl(manifest, builder.rows())
    write_json_atomic(
        root / "world.json",
        {"prompt": PROMPT_TEMPLATE, "labels": builder.labels, "question": QUESTION, "answer": ANSWER_TEMPLATE,
         "aliases": {word: [str(i)] for i, word in enumerate(DIGIT_WORDS)}, "kind": "digit",
         "subject": "the number {label}", "questions": list(QUESTIONS), "facts": digit_facts(), "demo": list(DEMO),
         "captions": builder.captions, "encoders": builder.encoders, "modalities": names, "seed": seed, "digits": len(builder.digits), "variant": variant},
    )
    return manifest


def digit_facts() -> dict[str, list[str]]:
    """A few true sentences about each digit, each naming it first."""
    facts = {}
    for i, word in enumerate(DIGIT_WORDS):
        name = word.capitalize()
        said = [f"{name} is an {'even' if i % 2 == 0 else 'odd'} number.", f"{name} is written as the digit {i}."]
        if i > 0:
            said.append(f"{name} is the number after {DIGIT_WORDS[i - 1]}.")
        if i < 9:
            said.append(f"{name} comes right before {DIGIT_WORDS[i + 1]}.")
        facts[word] = said
    return facts
