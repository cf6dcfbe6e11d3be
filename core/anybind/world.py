"""The sample world: real data for every installed modality, plus a JSONL manifest.

The world is built around sklearn's 1,797 real handwritten digits. Core provides the
digits, their held-out split and the captions; each modality plugin writes its own
part through the ``world`` factory of its :class:`~anybind.specs.ModalitySpec`
(``world(builder)``), attaching files either to one digit (an instance pair, e.g. a video
of *that* seven) or to a class label (e.g. the word "seven" spoken).

Manifest format (one JSON object per line; a user's own data uses the same format)::

    {"id": "d00017", "split": "train", "label": "seven", "text": "a handwritten seven",
     "image": "image/d00017.png", "video": "video/d00017.mp4", "pointcloud": "pointcloud/d00017.ply"}
    {"id": "a00321", "split": "test", "label": "seven", "audio": "audio/en-sc_s140_p50_seven.wav"}

A row is one example: the modalities named in a row are paired with each other. Rows
that share a ``label`` are treated as the same class (class-level pairing: an audio row
is paired with images of its label). ``meta`` holds free-form details (voice, speed, ...).
Paths are relative to the manifest's folder.
``world.json`` beside it gives the zero-shot prompt template and the label set.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

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
PROMPT_TEMPLATE = "a handwritten {label}"
#: What ``eval chat`` asks about each held-out attachment, and how align-in answers it.
QUESTION = "Which digit is this?"
ANSWER_TEMPLATE = "It is the digit {label}."
RESERVED_KEYS = ("id", "split", "label", "text", "meta")
SPLITS = ("train", "test")


@dataclass
class Digits:
    """The real digits: ``images`` (N, 8, 8) in [0, 1], ``labels`` (N,) ints, ``splits`` (N,)."""

    images: np.ndarray
    labels: np.ndarray
    splits: list[str]

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


class WorldBuilder:
    """What a plugin's ``world(builder)`` factory gets: the digits and where to write."""

    def __init__(self, root: Path, digits: Digits, seed: int = 0, small: bool = False):
        self.root = Path(root)
        self.digits = digits
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        #: True for quick builds (tests): plugins should write fewer variants.
        self.small = small
        self.labels = list(DIGIT_WORDS)
        self._digit_rows: list[dict[str, Any]] = []
        for i in range(len(digits)):
            word = digits.word(i)
            template = CAPTION_TEMPLATES[i % len(CAPTION_TEMPLATES)]
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

    def add(self, modality: str, path: Path, label: str, split: str, **meta: Any) -> None:
        """Add a file paired by class label only (e.g. a spoken digit word); ``meta`` is kept as-is."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        row_id = f"{modality[0]}{len(self._class_rows):05d}"
        self._class_rows.append(
            {"id": row_id, "split": split, "label": label, modality: path.relative_to(self.root).as_posix(),
             **({"meta": meta} if meta else {})}
        )

    def rows(self) -> list[dict[str, Any]]:
        return self._digit_rows + self._class_rows


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    tmp.replace(path)


def build_world(
    root: Path | str,
    modalities: Iterable[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    small: bool = False,
    progress: bool = True,
) -> Path:
    """Write the sample world for the installed (or named) modalities; return the manifest path."""
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
    builder = WorldBuilder(root, load_digits(limit), seed=seed, small=small)
    bar = tqdm(names, desc="world", unit="modality", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        resolve(installed[name].world, what=f"world builder of {name!r}")(builder)
    manifest = root / "manifest.jsonl"
    write_jsonl(manifest, builder.rows())
    write_json_atomic(
        root / "world.json",
        {"prompt": PROMPT_TEMPLATE, "labels": builder.labels, "question": QUESTION, "answer": ANSWER_TEMPLATE,
         "aliases": {word: [str(i)] for i, word in enumerate(DIGIT_WORDS)},
         "modalities": names, "seed": seed, "digits": len(builder.digits)},
    )
    return manifest


# -- reading manifests ---------------------------------------------------------------------


@dataclass
class Manifest:
    """A parsed manifest: rows with absolute paths, and the world metadata if present."""

    path: Path
    rows: list[dict[str, Any]]
    prompt: str = "{label}"
    labels: list[str] = field(default_factory=list)
    #: ``world.json``'s question about an attachment's label, the answer template, and other
    #: spellings of each label (e.g. "7" for "seven"), for chat training and evaluation.
    question: str | None = None
    answer: str = "{label}."
    aliases: dict[str, list[str]] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    def modalities(self) -> list[str]:
        keys = {k for row in self.rows for k in row if k not in RESERVED_KEYS and not k.startswith("_")}
        return sorted(keys)

    def select(self, split: str | None = None, has: Iterable[str] = ()) -> list[dict[str, Any]]:
        has = tuple(has)
        return [r for r in self.rows if (split is None or r.get("split") == split) and all(k in r for k in has)]


def read_manifest(path: Path | str) -> Manifest:
    """Parse a manifest (a .jsonl file, or a folder holding manifest.jsonl); errors name file and line."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise InputError(path, "manifest not found (build one with `anybind world build DIR`)")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{lineno}", f"invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{lineno}", "each line must be a JSON object")
        if "split" in row and row["split"] not in SPLITS:
            raise InputError(f"{path}:{lineno}", f"split must be one of {', '.join(SPLITS)}, not {row['split']!r}")
        row.setdefault("id", f"row{lineno}")
        row.setdefault("split", "train")
        row["_line"] = lineno
        for key, value in list(row.items()):
            if key in RESERVED_KEYS or key.startswith("_"):
                continue
            if not isinstance(value, str):
                raise InputError(f"{path}:{lineno}", f"{key} must be a file path string")
            row[key] = str((path.parent / value).resolve()) if not Path(value).is_absolute() else value
        rows.append(row)
    if not rows:
        raise InputError(path, "manifest has no rows")
    meta_file = path.parent / "world.json"
    manifest = Manifest(path=path, rows=rows, labels=sorted({r["label"] for r in rows if "label" in r}))
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(meta_file, f"invalid JSON ({exc.msg}, line {exc.lineno})") from None
        for key in ("prompt", "labels", "question", "answer", "aliases"):
            if key in meta:
                setattr(manifest, key, meta[key])
    return manifest
