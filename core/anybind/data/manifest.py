"""Manifests: the JSONL format every stage reads, a user's own data included.

One JSON object per line::

    {"id": "d00017", "split": "train", "label": "seven", "text": "a handwritten seven",
     "image": "image/d00017.png", "video": "video/d00017.mp4", "pointcloud": "pointcloud/d00017.ply"}
    {"id": "a00321", "split": "test", "label": "seven", "audio": "audio/en-sc_s140_p50_seven.wav"}

A row is one example: the modalities named in a row are paired with each other. Rows
that share a ``label`` are treated as the same class (class-level pairing: an audio row
is paired with images of its label). ``meta`` holds free-form details (voice, speed, ...).
Paths are relative to the manifest's folder.

``world.json`` beside it describes the world in words, so that no stage has its vocabulary
built in: the zero-shot prompt template, the label set, the question about an attachment
and its answer, other spellings of each label, what a label is (``kind``: "digit"), how a
sentence names one (``subject``: "the number {label}"), more ways to ask the question, a
few true sentences about each label (``facts``) and the quickstart's demo conversation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from anybind.errors import InputError

RESERVED_KEYS = ("id", "split", "label", "text", "meta")
SPLITS = ("train", "test")
#: The world.json keys a :class:`Manifest` takes over.
WORLD_KEYS = ("prompt", "labels", "question", "answer", "aliases", "kind", "subject", "questions", "facts", "demo",
              "captions", "encoders")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    tmp.replace(path)


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
    kind: str = "item"  # what a label is, e.g. "digit"
    subject: str = "{label}"  # how a sentence names a label, e.g. "the number {label}"
    questions: list[str] = field(default_factory=list)  # other ways to ask ``question``
    facts: dict[str, list[str]] = field(default_factory=dict)  # true sentences about each label
    demo: list[dict] = field(default_factory=list)  # the quickstart's demo: [{"prompt", "attach"?: {modality, label}, "needs"?: [output modality]}]
    #: how a caption of one modality's samples reads, where it is not ``prompt``'s
    #: (``{"audio": "the spoken word {label}"}``): what a decoder of that modality is trained and asked with
    captions: dict[str, str] = field(default_factory=dict)
    #: how a new tower of a modality reads this world's samples, as encoder settings
    #: (``{"image": {"normalize": "ink"}}`` for line drawings); bind checks them against the encoder
    encoders: dict[str, dict] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    def modalities(self) -> list[str]:
        keys = {k for row in self.rows for k in row if k not in RESERVED_KEYS and not k.startswith("_")}
        return sorted(keys)

    def fill(self, label: str, caption: str | None = None) -> dict[str, str]:
        """The placeholders a prompt template may use for ``label``: ``{l}``/``{label}``, ``{c}``
        (a caption: ``caption``, else the world's prompt), ``{s}`` (the subject) and ``{kind}``."""
        return {"l": label, "label": label, "c": caption or self.prompt.format(label=label),
                "s": self.subject.format(label=label), "kind": self.kind}

    def ask(self, rng) -> str:
        """A question about an attachment, in one of the world's ways to ask it (``rng``: a ``random.Random``)."""
        return rng.choice(self.questions or [self.question or "What is this?"])

    def answer_for(self, label: str) -> str:
        """The world's answer to that question for ``label``."""
        return (self.answer or "{label}.").format(label=label)

    def caption(self, modality: str, label: str) -> str:
        """The canonical caption of ``label`` for samples of ``modality``."""
        return self.captions.get(modality, self.prompt or "{label}").format(label=label)

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
        for key in WORLD_KEYS:
            if key in meta:
                setattr(manifest, key, meta[key])
    return manifest
