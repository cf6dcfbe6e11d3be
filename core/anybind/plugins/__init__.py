"""Plugins: the manager that finds and loads them, the registry of installable ones, the
pip/apt installer, the ``new-plugin`` scaffold and the built-in plugins.

Everything above this layer asks :mod:`anybind.plugins` for specs::

    from anybind import plugins
    plugins.get_modality("audio").load("seven.wav")
"""

from anybind.plugins.manager import (
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    PluginInfo,
    backbones,
    decoders,
    get_backbone,
    get_decoder,
    get_modality,
    load_plugins,
    modalities,
    modality_for_path,
    modality_owner,
    plugin_infos,
    register_commands,
    register_plugin,
    suffix_owners,
    unregister_plugin,
)

__all__ = [
    "DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "PluginInfo", "backbones", "decoders", "get_backbone", "get_decoder",
    "get_modality", "load_plugins", "modalities", "modality_for_path", "modality_owner", "plugin_infos",
    "register_commands", "register_plugin", "suffix_owners", "unregister_plugin",
]
