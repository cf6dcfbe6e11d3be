"""``anybind new-plugin``: write a ready plugin distribution from the template in ``templates/plugin``.

The template is plain files with ``$placeholders`` (:class:`string.Template`), shipped as
package data, so making a plugin needs nothing beyond anybind itself. ``__module__`` in a
path becomes the module name; the ``.tmpl`` suffix is dropped (it keeps the template's own
Python files away from linters and pytest).
"""

from __future__ import annotations

import re
import string
from importlib import resources
from pathlib import Path

from anybind.errors import AnybindError

TEMPLATE = "plugin"
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def plugin_names(name: str, modality: str | None = None) -> dict[str, str]:
    """The template's placeholders for plugin ``name`` (``strokes`` or ``anybind-strokes``)."""
    from anybind import __version__

    short = name.strip().lower().removeprefix("anybind-").removeprefix("anybind_").replace("-", "_")
    kind = (modality or short).strip()
    if not _NAME.fullmatch(short):
        raise AnybindError(f"plugin name {name!r}: use lower-case letters, digits, '-' or '_', starting with a letter "
                           "(e.g. anybind new-plugin strokes)")
    if not _NAME.fullmatch(kind):
        raise AnybindError(f"--modality {kind!r}: use lower-case letters, digits and '_', starting with a letter "
                           "(it names the manifest column and the Python identifiers)")
    return {
        "dist": "anybind-" + short.replace("_", "-"),
        "module": "anybind_" + short,
        "kind": kind,
        "Kind": "".join(part.capitalize() for part in kind.split("_")),
        "suffix": "." + kind,
        "anybind_version": __version__,
    }


def _template_files(root):
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            for child, rel in _template_files(entry):
                yield child, f"{entry.name}/{rel}"
        elif entry.name.endswith(".tmpl"):
            yield entry, entry.name


def new_plugin(name: str, modality: str | None = None, parent: Path | str = ".", suffix: str | None = None) -> list[Path]:
    """Write the plugin distribution ``anybind-NAME`` into ``parent``; return the files written."""
    names = plugin_names(name, modality)
    if suffix:
        names["suffix"] = "." + suffix.lower().lstrip(".")
        if not re.fullmatch(r"(\.[a-z0-9_]+)+", names["suffix"]):
            raise AnybindError(f"--suffix {suffix!r}: use letters, digits or '_', parts separated by dots "
                               "(e.g. --suffix .strokes, or --suffix .depth.npy beside another plugin's .npy)")
    _check_free(names)
    target = Path(parent) / names["dist"]
    if target.exists() and any(target.iterdir()):
        raise AnybindError(f"{target}: already exists and is not empty; remove it or choose another --dir")
    written = []
    for source, rel in _template_files(resources.files("anybind.plugins") / "templates" / TEMPLATE):
        path = target / rel.removesuffix(".tmpl").replace("__module__", names["module"])
        try:
            text = string.Template(source.read_text(encoding="utf-8")).substitute(names)
        except (KeyError, ValueError) as exc:  # a broken template is a bug in anybind, not the user's
            raise AnybindError(f"anybind's plugin template {rel} has a bad placeholder ({exc}); please report it") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _check_free(names: dict[str, str]) -> None:
    """Refuse a distribution, modality or suffix that an installed plugin already has: they would conflict."""
    from importlib import metadata

    from anybind.plugins import manager as plugins

    try:
        metadata.version(names["dist"])
    except metadata.PackageNotFoundError:
        pass
    else:
        raise AnybindError(f"{names['dist']} is already installed; choose another NAME (or anybind uninstall {names['dist']})")
    for spec in plugins.modalities().values():
        owner = plugins.modality_owner(spec.name)
        if spec.name == names["kind"]:
            raise AnybindError(f"the modality {names['kind']!r} is already provided by {owner}; choose another --modality")
        if names["suffix"] in spec.suffixes:
            raise AnybindError(f"{names['suffix']} files are already read by {owner} ({spec.name}); choose another --suffix")
