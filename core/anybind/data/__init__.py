"""Data: the manifest format every stage reads, the built-in sample world, and the prompt templates."""

from anybind.data.manifest import Manifest, read_manifest

__all__ = ["Manifest", "read_manifest"]
