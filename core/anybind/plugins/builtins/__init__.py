"""Plugins that ship with anybind, registered through the same hooks as installed ones."""
