"""Finding, loading and querying plugins.

Plugins are distributions with an entry point in the ``anybind`` group (built-ins are
ordinary plugins registered the same way). Loading is lazy and idempotent: every getter
calls :func:`load_plugins`, which imports each entry point on its own, so one plugin that
fails to import, or implements a misspelt hook, is recorded with its error and shown by
``anybind plugins`` while everything else keeps working.

``ANYBIND_LOAD_PLUGINS`` (comma-separated distribution names) restricts which installed
plugins are loaded; set it to an empty string to load only the built-ins.
"""

from __future__ import annotations

import difflib
import importlib
import os
import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pluggy

from anybind import hookspecs
from anybind.errors import InputError, PluginError
from anybind.specs import BackboneSpec, DecoderSpec, ModalitySpec

ENTRY_POINT_GROUP = "anybind"
# Built-in plugins, registered exactly like installed ones.
DEFAULT_PLUGINS = ("anybind.plugins.builtins.text", "anybind.plugins.builtins.hf")
HOOK_NAMES = tuple(n for n in vars(hookspecs) if n.startswith("register_"))

pm = pluggy.PluginManager("anybind")
pm.add_hookspecs(hookspecs)

_NOUNS = {"modalities": "modality", "decoders": "decoder", "backbones": "backbone"}
_lock = threading.RLock()
_loaded = False
_collected = None  # the _Collected specs, until the plugin set changes


@dataclass
class PluginInfo:
    """What ``anybind plugins`` shows for one plugin."""

    name: str
    version: str
    origin: str  # "builtin", "entry point" or "registered"
    errors: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    suffixes: list[str] = field(default_factory=list)  # file suffixes its modalities read
    decoders: list[str] = field(default_factory=list)
    backbones: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "error" if self.errors else "ok"

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "origin": self.origin,
            "status": self.status,
            "errors": list(self.errors),
            "modalities": self.modalities,
            "suffixes": self.suffixes,
            "decoders": self.decoders,
            "backbones": self.backbones,
            "commands": self.commands,
        }


# Plugins that could not be registered at all (import failed, bad hook): name -> info.
_failed: dict[str, PluginInfo] = {}
# Where registered plugin objects came from: plugin name -> (origin, version).
_origins: dict[str, tuple[str, str]] = {}


def _allow_list() -> set[str] | None:
    raw = os.environ.get("ANYBIND_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _unknown_hook_message(plugin) -> str | None:
    """Name any ``register_*`` function that is not a hook we know (a likely typo)."""
    for attr in dir(plugin):
        if not attr.startswith("register") or attr in HOOK_NAMES:
            continue
        fn = getattr(plugin, attr, None)
        if callable(fn) and hasattr(fn, "anybind_impl"):
            close = difflib.get_close_matches(attr, HOOK_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"implements unknown hook {attr!r}{hint}"
    return None


def _invalidate() -> None:
    """Forget the collected specs; the next getter calls the registration hooks again."""
    global _collected
    _collected = None


def _register(plugin, name: str, origin: str, version: str) -> None:
    """Register one plugin object, recording instead of raising when it is broken."""
    _invalidate()
    try:
        pm.register(plugin, name=name)
    except ValueError:  # already registered under this name: idempotent
        return
    except pluggy.PluginValidationError as exc:
        _failed[name] = PluginInfo(name, version, origin, errors=[f"invalid hook: {exc}"])
        return
    try:
        pm.check_pending()
    except pluggy.PluginValidationError:
        pm.unregister(name=name)
        message = _unknown_hook_message(plugin) or "implements a hook anybind does not define"
        _failed[name] = PluginInfo(name, version, origin, errors=[message])
        return
    _origins[name] = (origin, version)


def load_plugins() -> None:
    """Register the built-ins and every installed entry point, once."""
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
        from anybind import __version__

        for module_name in DEFAULT_PLUGINS:
            _register(importlib.import_module(module_name), module_name, "builtin", __version__)

        allow = _allow_list()
        seen = set()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else ep.name
            version = ep.dist.version if ep.dist is not None else "?"
            if (dist, ep.name) in seen or (allow is not None and dist not in allow):
                continue
            seen.add((dist, ep.name))
            try:
                module = ep.load()
            except BaseException as exc:  # noqa: BLE001 - a plugin must never take us down
                if isinstance(exc, KeyboardInterrupt):
                    raise
                _failed[dist] = PluginInfo(
                    dist, version, "entry point", errors=[f"import failed: {type(exc).__name__}: {exc}"]
                )
                continue
            _register(module, dist, "entry point", version)


def register_plugin(plugin, name: str) -> None:
    """Register a plugin object directly (tests, notebooks). Undo with :func:`unregister_plugin`."""
    load_plugins()
    _failed.pop(name, None)
    _register(plugin, name, "registered", getattr(plugin, "__version__", "0"))


def unregister_plugin(name: str) -> None:
    _invalidate()
    if pm.get_plugin(name) is not None:
        pm.unregister(name=name)
    _origins.pop(name, None)
    _failed.pop(name, None)


# Sub-commands each plugin added to the CLI: plugin name -> command names.
_command_owners: dict[str, list[str]] = {}
# Errors raised by a registered plugin's register_commands hook.
_failed_hooks: dict[str, list[str]] = {}


def register_commands(cli) -> None:
    """Let every plugin add sub-commands to ``cli``; a failing plugin is recorded, not raised."""
    load_plugins()
    for impl in pm.hook.register_commands.get_hookimpls():
        before = set(cli.commands)
        try:
            impl.function(**{arg: cli for arg in impl.argnames})
        except Exception as exc:  # noqa: BLE001
            _failed_hooks.setdefault(impl.plugin_name, []).append(
                f"register_commands failed: {type(exc).__name__}: {exc}"
            )
        _command_owners[impl.plugin_name] = sorted(set(cli.commands) - before)
    _invalidate()


# -- collecting specs -------------------------------------------------------------------


@dataclass
class _Collected:
    infos: dict[str, PluginInfo]
    modalities: dict[str, tuple[ModalitySpec, str]]
    decoders: dict[str, tuple[DecoderSpec, str]]
    backbones: dict[str, tuple[BackboneSpec, str]]
    conflicts: dict[tuple[str, str], list[str]]  # (kind, name) -> plugins


def _collect() -> _Collected:
    """The specs of every registered plugin, collected once per change of the plugin set.

    Getters run per file (e.g. the modality for each path of a corpus), so the hooks are
    not called again until a plugin is registered or unregistered.
    """
    global _collected
    load_plugins()
    with _lock:
        if _collected is None:
            _collected = _call_registration_hooks()
        return _collected


def _call_registration_hooks() -> _Collected:
    """Call every registration hook, one plugin at a time, attributing errors."""
    infos: dict[str, PluginInfo] = {}
    for name in pm.list_name_plugin():
        pname = name[0]
        origin, version = _origins.get(pname, ("registered", "0"))
        infos[pname] = PluginInfo(pname, version, origin)
    for pname, info in _failed.items():
        infos[pname] = PluginInfo(info.name, info.version, info.origin, errors=list(info.errors))

    tables = {"modalities": {}, "decoders": {}, "backbones": {}}
    conflicts: dict[tuple[str, str], list[str]] = {}
    kinds = {
        "register_modalities": ("modalities", ModalitySpec),
        "register_decoders": ("decoders", DecoderSpec),
        "register_backbones": ("backbones", BackboneSpec),
    }
    for hook_name, (kind, spec_type) in kinds.items():
        table = tables[kind]
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            pname = impl.plugin_name
            info = infos[pname]

            def register(spec, _pname=pname, _kind=kind, _type=spec_type, _table=table):
                if not isinstance(spec, _type):
                    raise PluginError(f"{_kind} must be registered as {_type.__name__}, got {type(spec).__name__}")
                getattr(infos[_pname], _kind).append(spec.name)
                if _kind == "modalities":
                    infos[_pname].suffixes.extend(spec.suffixes)
                if spec.name in _table:
                    conflicts.setdefault((_kind, spec.name), [_table[spec.name][1]]).append(_pname)
                else:
                    _table[spec.name] = (spec, _pname)

            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except Exception as exc:  # noqa: BLE001
                info.errors.append(f"{hook_name} failed: {type(exc).__name__}: {exc}")

    for pname, names in _command_owners.items():
        if pname in infos:
            infos[pname].commands = list(names)
    for pname, errors in _failed_hooks.items():
        if pname in infos:
            infos[pname].errors.extend(errors)

    _note_suffix_clashes(tables["modalities"], infos)
    for (kind, name), owners in conflicts.items():
        for owner in owners:
            others = ", ".join(o for o in owners if o != owner)
            infos[owner].errors.append(f"{_NOUNS[kind]} {name!r} is also registered by {others}")
    return _Collected(infos, tables["modalities"], tables["decoders"], tables["backbones"], conflicts)


def _note_suffix_clashes(modalities: dict, infos: dict[str, PluginInfo]) -> None:
    """A suffix two plugins claim is read by the first registered; the others are told so."""
    claimed: dict[str, list[tuple[str, str]]] = {}
    for name, (spec, owner) in modalities.items():
        for suffix in spec.suffixes:
            claimed.setdefault(suffix, []).append((owner, name))
    for suffix, owners in claimed.items():
        first = f"{owners[0][0]} ({owners[0][1]})"
        for owner, _ in owners[1:]:
            infos[owner].errors.append(f"{suffix} files are also claimed by {first}, which reads them")


def _conflict_error(kind: str, name: str, owners: list[str]) -> PluginError:
    noun = _NOUNS[kind]
    return PluginError(
        f"{noun} {name!r} is registered by more than one plugin: {', '.join(owners)}. "
        f"Uninstall all but one (anybind uninstall NAME)."
    )


def plugin_infos() -> list[PluginInfo]:
    """Every known plugin, including broken ones, sorted with built-ins first."""
    infos = _collect().infos.values()
    return sorted(infos, key=lambda i: (i.origin != "builtin", i.name))


def _get(kind: str, name: str):
    collected = _collect()
    if (kind, name) in collected.conflicts:
        raise _conflict_error(kind, name, collected.conflicts[(kind, name)])
    table = getattr(collected, kind)
    if name not in table:
        noun = _NOUNS[kind]
        hint = _install_hint(kind, name)
        raise PluginError(f"no installed plugin provides the {noun} {name!r}.{hint}")
    return table[name][0]


def _install_hint(kind: str, name: str) -> str:
    from anybind.plugins.registry import find_provider

    try:
        entry = find_provider(kind, name)
    except Exception:  # noqa: BLE001 - a broken registry must not hide the real error
        entry = None
    if entry is None:
        return " See `anybind plugins` for what is installed."
    return f" Install it with: anybind install {entry.name}"


def get_modality(name: str) -> ModalitySpec:
    return _get("modalities", name)


def get_decoder(name: str) -> DecoderSpec:
    return _get("decoders", name)


def get_backbone(name: str) -> BackboneSpec:
    return _get("backbones", name)


def modalities() -> dict[str, ModalitySpec]:
    """Installed modalities by name (conflicting names left out; see :func:`get_modality`)."""
    collected = _collect()
    return {n: s for n, (s, _) in collected.modalities.items() if ("modalities", n) not in collected.conflicts}


def backbones() -> dict[str, BackboneSpec]:
    """Installed backbones by name (conflicting names left out)."""
    collected = _collect()
    return {n: s for n, (s, _) in collected.backbones.items() if ("backbones", n) not in collected.conflicts}


def decoders() -> dict[str, DecoderSpec]:
    """Installed decoders by name (conflicting names left out)."""
    collected = _collect()
    return {n: s for n, (s, _) in collected.decoders.items() if ("decoders", n) not in collected.conflicts}


def modality_owner(name: str) -> str:
    return _collect().modalities[name][1]


def modality_for_path(path) -> ModalitySpec:
    """The installed modality that reads this file, chosen by suffix; the longest suffix that
    matches wins, so a plugin may claim ``.depth.npy`` beside another's ``.npy``."""
    name = Path(path).name.lower()
    claims = [(len(s), spec) for spec in modalities().values() for s in spec.suffixes if name.endswith(s)]
    if claims:
        return max(claims, key=lambda c: c[0])[1]
    suffix = "".join(Path(path).suffixes).lower() or Path(path).suffix.lower()
    from anybind.plugins.registry import find_provider

    try:
        entry = find_provider("suffixes", Path(path).suffix.lower())
    except Exception:  # noqa: BLE001
        entry = None
    if entry is not None:
        raise InputError(path, f"no installed plugin reads {suffix} files; install one with: anybind install {entry.name}")
    raise InputError(path, f"no installed plugin reads {suffix or 'suffix-less'} files (see `anybind plugins`)")


def suffix_owners() -> dict[str, str]:
    """Every suffix an installed modality reads: ``{suffix: "modality (plugin)"}``."""
    return {s: f"{name} ({modality_owner(name)})" for name, spec in modalities().items() for s in spec.suffixes}
