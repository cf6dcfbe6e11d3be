"""Model directories, the Hugging Face way: ``config.json`` + ``model.safetensors``.

Every module that saves weights uses :func:`save_model_dir` / :func:`load_model_dir` (or
:class:`PretrainedMixin`, built on them). Writes are atomic: the directory is assembled
next to its destination and renamed into place, so an interrupted save leaves the previous
checkpoint intact. Nothing is ever loaded with pickle.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from anybind.errors import AnybindError, CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file renamed into place (never a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_output_file(path: Path | str, data: bytes) -> Path:
    """Write a made output (an image, a sound) to a file the user named: checked writable first,
    written whole or not at all, an OS error reported as the file's (``AnybindError``)."""
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise AnybindError(f"{path}: cannot write: {exc.strerror or exc}") from None
        raise
    return path


def write_json_atomic(path: Path | str, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def check_writable(path: Path | str) -> Path:
    """Fail before any work if the file ``path`` cannot be written (folder missing, read-only, a directory)."""
    path = Path(path)
    if path.is_dir():
        raise AnybindError(f"{path}: is a directory; give a file name inside it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise AnybindError(f"{path}: cannot write: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise AnybindError(f"{path}: cannot write: folder {parent} is not writable")
    return path


def save_model_dir(
    path: Path | str,
    config: Mapping[str, Any],
    state_dict: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes | str] | None = None,
) -> Path:
    """Write ``config.json`` (+ ``model.safetensors``, + extra files) atomically to ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write_json_atomic(tmp / CONFIG_NAME, dict(config))
        if state_dict is not None:
            # safetensors refuses shared or strided storage; saved tensors are independent copies.
            tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        for name, content in (extra_files or {}).items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_config(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    config_file = path / CONFIG_NAME
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a model directory (expected a folder with {CONFIG_NAME})")
    if not config_file.is_file():
        raise CheckpointError(f"{path}: missing {CONFIG_NAME}; is this an anybind model directory?")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_file}: invalid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object")
    return config


def read_json(path: Path | str) -> dict[str, Any]:
    """A JSON object from ``path``; a clear error naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def load_model_dir(path: Path | str, *, weights: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read ``(config, state_dict)`` from a model directory (safetensors only)."""
    config = read_config(path)
    if not weights:
        return config, {}
    weights_file = Path(path) / WEIGHTS_NAME
    if not weights_file.is_file():
        raise CheckpointError(f"{path}: missing {WEIGHTS_NAME}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return config, load_file(str(weights_file))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_file}: unreadable safetensors file ({exc})") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config)


def config_from_dict(config_class: type, data: Mapping[str, Any], *, source: str = "config") -> Any:
    """Build a config dataclass, rejecting unknown keys with a clear message."""
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(
            f"{source}: unknown {config_class.__name__} field(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for f in dataclasses.fields(config_class):
        if f.name in data:
            value = data[f.name]
            kwargs[f.name] = tuple(value) if isinstance(value, list) and "tuple" in str(f.type) else value
    return config_class(**kwargs)


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` built from ``self.config``.

    The class sets ``Config`` (a dataclass) and takes it as its only init argument.
    ``_frozen_prefixes`` names state-dict prefixes that are rebuilt from pretrained weights
    on load (e.g. a frozen text tower shipped in a package) and so are not saved.
    """

    Config: type
    _frozen_prefixes: tuple[str, ...] = ()

    def save_pretrained(self, path: Path | str, **extra_config: Any) -> Path:
        state = {
            k: v for k, v in self.state_dict().items() if not k.startswith(self._frozen_prefixes)
        }
        config = {"class": f"{type(self).__module__}:{type(self).__qualname__}", **config_to_dict(self.config)}
        config.update(extra_config)
        return save_model_dir(path, config, state)

    @classmethod
    def from_pretrained(cls, path: Path | str):
        config, state = load_model_dir(path)
        config.pop("class", None)
        model = cls(config_from_dict(cls.Config, config, source=str(Path(path) / CONFIG_NAME)))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(cls._frozen_prefixes)]
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not match {cls.__name__} (missing: {missing[:5]}, unexpected: {unexpected[:5]})"
            )
        return model
