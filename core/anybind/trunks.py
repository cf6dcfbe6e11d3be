"""Pretrained trunks: how a tower names the checkpoint its trunk starts from, and how much of
it trains. Core owns only this syntax; each modality plugin loads the checkpoints it knows.

References (``--trunk MODALITY=REF`` on ``anybind train bind``, saved in the tower's config):

* ``hf:PATH``: a local transformers checkpoint, loaded with the Auto classes and preprocessed
  by the checkpoint's own image processor or feature extractor;
* ``timm:NAME@FILE``: the timm architecture ``NAME`` with its weights from the local ``FILE``
  (timm's ``pretrained_cfg_overlay=dict(file=FILE)``; no hub).

How much trains (``--train-trunk MODALITY=MODE``): ``frozen`` (only the tower's head; the
trunk's outputs can then be cached), ``last:N`` (its last N blocks as well), ``lora`` or
``lora:R`` (peft LoRA adapters of rank R, default 8, on its attention), ``full`` (everything).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from anybind.errors import AnybindError, CheckpointError

SCHEMES = ("hf", "timm")
MODES = ("frozen", "last:N", "lora", "lora:R", "full")


@dataclass(frozen=True)
class TrunkReference:
    scheme: str
    name: str  # a directory for hf:, an architecture for timm:
    file: str | None = None  # timm: the weights file

    @classmethod
    def parse(cls, text: str) -> "TrunkReference":
        scheme, sep, rest = (text or "").partition(":")
        if not sep or scheme not in SCHEMES or not rest:
            raise AnybindError(f"trunk reference {text!r}: expected hf:PATH or timm:NAME@FILE")
        if scheme == "hf":
            return cls("hf", str(Path(rest).expanduser().resolve()))
        name, at, file = rest.partition("@")
        if not at or not name or not file:
            raise AnybindError(f"trunk reference {text!r}: timm needs its weights file, timm:NAME@FILE "
                               "(nothing is downloaded)")
        return cls("timm", name, str(Path(file).expanduser().resolve()))

    def __str__(self) -> str:
        return f"{self.scheme}:{self.name}" + (f"@{self.file}" if self.file else "")

    def files(self) -> list[Path]:
        """The files the trunk's weights and settings come from."""
        if self.scheme == "timm":
            return [Path(self.file)]
        return sorted(p for p in Path(self.name).iterdir() if p.is_file())

    def fingerprint(self) -> str:
        """Changes when the reference or any of its files does (name, size, modification time):
        what a feature cache is keyed by, beside each input file's content."""
        digest = hashlib.sha256(str(self).encode())
        for path in self.files():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class TrunkMode:
    kind: str = "full"  # "frozen", "last", "lora" or "full"
    layers: int = 0  # last:N
    rank: int = 8  # lora:R

    @classmethod
    def parse(cls, text: str) -> "TrunkMode":
        kind, _, arg = (text or "full").partition(":")
        try:
            if kind in ("frozen", "full") and not arg:
                return cls(kind)
            if kind == "last" and int(arg) > 0:
                return cls("last", layers=int(arg))
            if kind == "lora":
                return cls("lora", rank=int(arg) if arg else 8)
        except ValueError:
            pass
        raise AnybindError(f"trunk mode {text!r}: expected one of {', '.join(MODES)} (N, R: positive integers)")

    def __str__(self) -> str:
        return {"last": f"last:{self.layers}", "lora": f"lora:{self.rank}"}.get(self.kind, self.kind)


def _check_checkpoint(path: Path | str, what: str) -> None:
    """A clear error naming a checkpoint directory that is missing, not a checkpoint, or
    half-written (no weights, or a config transformers cannot read)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory (hf:PATH takes a local {what} checkpoint)")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a Hugging Face checkpoint (no config.json)")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.safetensors.index.json"))
    if not weights:
        raise CheckpointError(f"{path}: has no *.safetensors weights (half-written, or saved as a pickle: "
                              "re-save it with save_pretrained(safe_serialization=True))")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}/config.json: not a transformers config ({exc})") from None


def load_auto_model(path: Path | str, what: str):
    """``AutoModel.from_pretrained(path)`` of a local ``what`` ("vision", "audio", "text")
    checkpoint, checked first; weights that leave part of the model at its random initialisation
    (a half-written or mismatched checkpoint) are refused, except an unused pooler (a ViT saved
    without one), which is removed so that nothing random is ever used."""
    _check_checkpoint(path, what)
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report is turned into our error below
    try:
        model, info = AutoModel.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: cannot load its weights ({str(exc).splitlines()[0][:300]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = set(info.get("missing_keys") or [])
    poolers = {k for k in missing if k.startswith("pooler.") or ".pooler." in k}
    if missing - poolers:
        raise CheckpointError(f"{path}: its weights lack {len(missing - poolers)} of the model's tensors "
                              f"(e.g. {sorted(missing - poolers)[:3]}): half-written, or another architecture")
    for key in poolers:
        owner = model
        parts = key.split(".")
        for part in parts[: parts.index("pooler")]:
            owner = getattr(owner, part)
        if getattr(owner, "pooler", None) is not None:
            owner.pooler = None
    return model
