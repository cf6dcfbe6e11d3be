"""The shared embedding space: one tower per modality, all ending in the same space.

A :class:`Tower` is a plugin's trunk followed by core's pooling, linear head and
L2-normalisation. An :class:`AnybindModel` holds a tower per modality and is what
``anybind.load(DIR)`` returns. On disk (a *bound model directory*)::

    DIR/config.json              {"format": "anybind.bound", "embed_dim": 128, "modalities": [...]}
    DIR/<modality>/config.json   the tower: modality, plugin, embed_dim and encoder config
    DIR/<modality>/model.safetensors

One directory per modality, so binding a new modality never rewrites the others.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anybind import plugins
from anybind.errors import CheckpointError, InputError, PluginError, TowerUnavailableWarning
from anybind.modality import ModalityEncoder
from anybind.persistence import (
    CONFIG_NAME,
    config_from_dict,
    config_to_dict,
    load_model_dir,
    read_config,
    save_model_dir,
    write_json_atomic,
)

BOUND_FORMAT = "anybind.bound"


class Tower(nn.Module):
    """trunk → masked-mean pool → linear head → L2 normalise: (batch) -> (B, D)."""

    def __init__(self, modality: str, encoder: ModalityEncoder, embed_dim: int | None = None):
        super().__init__()
        self.modality = modality
        self.encoder = encoder
        self.embed_dim = embed_dim or encoder.width
        self.head = nn.Linear(encoder.width, embed_dim) if embed_dim else nn.Identity()

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        # ``pooled``: the trunk's pooled outputs, given (a frozen trunk's, from a feature cache)
        pooled = batch["pooled"] if "pooled" in batch else self.encoder(**batch).pooled()  # (B, W)
        return F.normalize(self.head(pooled), dim=-1)  # (B, D)

    @classmethod
    def create(cls, modality: str, embed_dim: int | None = None, config: dict | None = None) -> "Tower":
        """A fresh tower from the installed plugin, with ``config`` overriding its defaults."""
        spec = plugins.get_modality(modality)
        encoder_cls = spec.encoder_class()
        merged = {**dict(spec.config), **(config or {})}
        encoder_config = config_from_dict(encoder_cls.Config, merged, source=f"{modality} encoder config")
        return cls(modality, encoder_cls(encoder_config), embed_dim)

    @torch.no_grad()
    def embed_files(self, paths: Sequence[str], samples: Sequence[dict[str, torch.Tensor]], cache_root: Path | None,
                    batch_size: int = 64) -> torch.Tensor:
        """Like :meth:`embed_samples`, for samples read from ``paths``: a frozen pretrained trunk's
        outputs come from (and go to) the feature cache under ``cache_root``, if given."""
        from anybind.models.feature_cache import FeatureCache, caches

        if cache_root is None or not caches(self.encoder):
            return self.embed_samples(samples, batch_size)

        self.eval()
        device = next(self.parameters()).device
        pooled = FeatureCache(cache_root, self.encoder).pooled(paths, samples, batch_size, device=device)
        return torch.cat([self(pooled=pooled[i : i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(pooled), batch_size)]) if len(pooled) else torch.empty(0, self.embed_dim)

    @torch.no_grad()
    def embed_samples(self, samples: Sequence[dict[str, torch.Tensor]], batch_size: int = 64) -> torch.Tensor:
        """Embed preprocessed samples in eval mode, batch by batch: (N, D) on the CPU."""
        self.eval()
        device = next(self.parameters()).device
        chunks = []
        for start in range(0, len(samples), batch_size):
            batch = self.encoder.collate(list(samples[start : start + batch_size]))
            chunks.append(self(**{k: v.to(device) for k, v in batch.items()}).float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim)

    def save_pretrained(self, path: Path | str) -> Path:
        state = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        state.update({f"encoder.{k}": v for k, v in self.encoder.saved_state().items()})
        config = {
            "format": "anybind.tower",
            "modality": self.modality,
            "plugin": plugins.modality_owner(self.modality),
            "embed_dim": self.embed_dim if isinstance(self.head, nn.Linear) else None,
            "encoder": config_to_dict(self.encoder.config),
        }
        return save_model_dir(path, config, state)

    @classmethod
    def from_pretrained(cls, path: Path | str) -> "Tower":
        config, state = load_model_dir(path)
        if config.get("format") != "anybind.tower":
            raise CheckpointError(f"{path}: not an anybind tower directory (config.json has no format 'anybind.tower')")
        tower = cls.create(config["modality"], config.get("embed_dim"), config.get("encoder"))
        missing, unexpected = tower.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k.startswith("encoder.") and tower.encoder.restores(k[len("encoder."):]))]
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not fit the installed {config['modality']} plugin "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it trained with another version?"
            )
        return tower


def _looks_like_path(text: str) -> bool:
    return os.sep in text or (Path(text).suffix != "" and " " not in text and len(Path(text).suffix) <= 6)


def resolve_input(item: str | Path) -> tuple[str, object]:
    """``(modality, raw sample)`` for a file path or a piece of text."""
    if isinstance(item, Path) or (isinstance(item, str) and _looks_like_path(item)):
        path = Path(item)
        if not path.exists():
            if isinstance(item, str) and not any(s for s in _known_suffixes() if item.lower().endswith(s)):
                return "text", item  # e.g. "hello.world" typed as text
            raise InputError(path, "file not found")
        if path.is_dir():
            raise InputError(path, "is a directory, expected a file")
        spec = plugins.modality_for_path(path)
        return spec.name, spec.load(path)
    if not isinstance(item, str) or not item.strip():
        raise InputError(repr(item), "expected a file path or non-empty text")
    return "text", item


def _known_suffixes() -> set[str]:
    return {s for spec in plugins.modalities().values() for s in spec.suffixes}


class AnybindModel(nn.Module):
    """Towers for several modalities that embed into one space."""

    def __init__(self, towers: dict[str, Tower]):
        super().__init__()
        self.towers = nn.ModuleDict(towers)
        #: towers on disk whose plugin is not installed: {modality: what to install}
        self.unavailable: dict[str, str] = {}
        #: the directory it was loaded from, if any (what an index's fingerprint hashes)
        self.source: Path | None = None

    @property
    def embed_dim(self) -> int:
        return next(iter(self.towers.values())).embed_dim

    @property
    def modalities(self) -> list[str]:
        return list(self.towers.keys())

    @classmethod
    def pretrained_text(cls) -> "AnybindModel":
        """Only the frozen text tower, with no head: the raw sentence-encoder space."""
        return cls({"text": Tower.create("text")})

    def tower(self, modality: str) -> Tower:
        if modality in self.unavailable:
            raise PluginError(self.unavailable[modality])
        if modality not in self.towers:
            raise CheckpointError(
                f"this model has no {modality} tower (it has: {', '.join(self.towers)}). "
                f"Train one with: anybind train bind --modality {modality}"
            )
        return self.towers[modality]

    def embed_raw(self, modality: str, raws: Sequence[object], batch_size: int = 64) -> torch.Tensor:
        """Embed already-loaded raw samples of one modality: (N, D)."""
        tower = self.tower(modality)
        return tower.embed_samples([tower.encoder.preprocess(raw) for raw in raws], batch_size)

    def embed_files(self, modality: str, paths: Sequence[str], raws: Sequence[object], batch_size: int = 64) -> torch.Tensor:
        """Embed files already read (``raws``, from ``paths``), through the feature cache beside
        the model's directory where a tower's trunk is frozen and pretrained."""
        tower = self.tower(modality)
        samples = [tower.encoder.preprocess(raw) for raw in raws]
        return tower.embed_files(paths, samples, self.source / ".features" if self.source else None, batch_size)

    def embed(self, inputs: Iterable[str | Path], batch_size: int = 64) -> torch.Tensor:
        """Embed files (any installed modality, chosen by suffix) and texts: (N, D), L2-normalised.

        Inputs are grouped by modality and batched; rows come back in input order.
        """
        return self.embed_resolved([resolve_input(x) for x in inputs], batch_size)

    def embed_resolved(self, resolved: Sequence[tuple[str, object]], batch_size: int = 64) -> torch.Tensor:
        """Embed ``(modality, raw)`` pairs from :func:`resolve_input`, keeping their order."""
        out = torch.empty(len(resolved), self.embed_dim)
        by_modality: dict[str, list[int]] = {}
        for i, (modality, _) in enumerate(resolved):
            by_modality.setdefault(modality, []).append(i)
        for modality, rows in by_modality.items():
            out[rows] = self.embed_raw(modality, [resolved[i][1] for i in rows], batch_size)
        return out

    def save_pretrained(self, path: Path | str, **extra: object) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, tower in self.towers.items():
            tower.save_pretrained(path / name)
        update_bound_index(path, self.embed_dim, self.towers, **extra)
        return path

    @classmethod
    def from_pretrained(cls, path: Path | str, modalities: Iterable[str] | None = None) -> "AnybindModel":
        path = Path(path)
        index = read_config(path)
        if index.get("format") != BOUND_FORMAT:
            raise CheckpointError(f"{path}: not a bound anybind model (config.json format is {index.get('format')!r})")
        wanted = list(modalities) if modalities is not None else index.get("modalities", [])
        towers, unavailable = {}, {}
        installed = plugins.modalities()
        for name in wanted:
            if not (path / name / CONFIG_NAME).is_file():
                raise CheckpointError(f"{path}: has no {name} tower (trained: {', '.join(index.get('modalities', []))})")
            if name not in installed:  # its plugin was uninstalled: the other towers still work
                unavailable[name] = _missing_plugin(path / name)
                warnings.warn(unavailable[name], TowerUnavailableWarning, stacklevel=2)
                continue
            towers[name] = Tower.from_pretrained(path / name)
        model = cls(towers)
        model.unavailable = unavailable
        model.source = path
        return model


def _missing_plugin(tower_dir: Path) -> str:
    """What to say of a tower whose modality plugin is not installed: the tower, and what brings it back."""
    config = read_config(tower_dir)
    plugin = config.get("plugin") or f"anybind-{config.get('modality')}"
    from anybind.plugins.registry import find_entry

    try:
        entry = find_entry(plugin)
    except Exception:  # noqa: BLE001 - a broken registry must not hide this
        entry = None
    return (f"{tower_dir}: the {config.get('modality')} tower is unavailable: its plugin {plugin} is not installed "
            f"(the model's other towers work); bring it back with: anybind install {entry.name if entry else plugin}")


def update_bound_index(path: Path, embed_dim: int, modalities: Iterable[str], **extra: object) -> None:
    """Add ``modalities`` to the bound model's ``config.json`` (created if missing), keeping the rest."""
    index = read_config(path) if (path / CONFIG_NAME).is_file() else {}
    index.update(extra)
    index.update({"format": BOUND_FORMAT, "embed_dim": embed_dim})
    index["modalities"] = sorted(set(index.get("modalities", [])) | set(modalities))
    write_json_atomic(path / CONFIG_NAME, index)


def embed_rows(model, rows: list[dict], modality: str, skip_bad: bool = True):
    """Embed each manifest row's ``modality`` file with ``model`` (anything with ``embed_raw``);
    returns ``(kept rows, (N, D) embeddings)``, leaving out unreadable files unless ``skip_bad`` is False."""
    spec = plugins.get_modality(modality)
    kept, raws = [], []
    for row in rows:
        try:
            raws.append(spec.load(row[modality]))
            kept.append(row)
        except (InputError, FileNotFoundError):
            if not skip_bad:
                raise
    if not raws:
        return kept, torch.empty(0, model.embed_dim)
    return kept, model.embed_files(modality, [r[modality] for r in kept], raws)
