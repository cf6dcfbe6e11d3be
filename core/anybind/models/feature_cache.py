"""Pooled outputs of a frozen pretrained trunk, computed once per input file and kept.

A frozen trunk gives the same output for the same file every time, so training its tower's
head (and every later stage that embeds the same files) need not run it again. Entries are
keyed by the file's content (sha256) within a folder keyed by the trunk: its reference, the
files the reference points at (name, size, modification time) and the encoder's settings
(preprocessing included), so changing the file or the trunk is a miss, never a stale hit::

    CACHE/<trunk key>/features.safetensors   {"features": (N, W) float32}
    CACHE/<trunk key>/keys.json              [content hash of row 0, row 1, ...]

The bind stage keeps it in ``BOUND/.features/``; ``bench/feature_cache.py`` measures it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch

from anybind.persistence import config_to_dict, write_json_atomic


def file_hash(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def caches(encoder) -> bool:
    """Whether ``encoder``'s outputs can be cached: nothing in it trains and its trunk is a
    pretrained checkpoint (a reference that fixes its weights)."""
    return bool(encoder.frozen and getattr(encoder.config, "trunk", ""))


def trunk_key(encoder) -> str:
    """What the cached outputs depend on besides the file: the trunk and the encoder's settings."""
    from anybind.trunks import TrunkReference

    settings = json.dumps(config_to_dict(encoder.config), sort_keys=True, default=str)
    return hashlib.sha256((settings + TrunkReference.parse(encoder.config.trunk).fingerprint()).encode()).hexdigest()[:16]


class FeatureCache:
    def __init__(self, root: Path | str, encoder, write: bool = True):
        self.encoder, self.write = encoder, write  # write: False on all but one of several processes
        self.folder = Path(root) / trunk_key(encoder)
        self.hits = self.misses = 0

    def _read(self) -> tuple[dict[str, int], torch.Tensor | None]:
        keys_file, features_file = self.folder / "keys.json", self.folder / "features.safetensors"
        if not (keys_file.is_file() and features_file.is_file()):
            return {}, None
        from safetensors.torch import load_file

        keys = json.loads(keys_file.read_text())
        features = load_file(str(features_file))["features"]
        if len(keys) != len(features):  # a write that stopped half-way: start again
            return {}, None
        return {k: i for i, k in enumerate(keys)}, features

    def _write(self, keys: list[str], features: torch.Tensor) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / "features.safetensors.tmp"
        save_file({"features": features.contiguous()}, str(tmp))
        tmp.replace(self.folder / "features.safetensors")
        write_json_atomic(self.folder / "keys.json", keys)

    @torch.no_grad()
    def pooled(self, paths: Sequence[str], samples: Sequence[dict], batch_size: int = 64, device=None,
               progress: bool = False) -> torch.Tensor:
        """(N, W) pooled trunk outputs of ``samples`` (preprocessed from ``paths``), running the
        trunk only on files not cached yet."""
        from tqdm.auto import tqdm

        hashes = [file_hash(p) for p in paths]
        known, features = self._read()
        todo, seen = [], set(known)  # the first sample of each content not cached yet
        for i, h in enumerate(hashes):
            if h not in seen:
                seen.add(h)
                todo.append(i)
        self.hits, self.misses = len(hashes) - len(todo), len(todo)
        if todo:
            self.encoder.eval()
            device = device or next(iter(self.encoder.parameters())).device
            new = []
            for start in tqdm(range(0, len(todo), batch_size), desc="trunk features (cached)", unit="batch",
                              leave=False, disable=not progress):
                rows = todo[start:start + batch_size]
                batch = self.encoder.collate([samples[i] for i in rows])
                new.append(self.encoder(**{k: v.to(device) for k, v in batch.items()}).pooled().float().cpu())
            keys = list(known) + [hashes[i] for i in todo]
            features = torch.cat(([features] if features is not None else []) + new)
            if self.write:
                self._write(keys, features)
            known = {k: i for i, k in enumerate(keys)}
        return features[[known[h] for h in hashes]]
