"""anybind: any-to-any multimodal models from pip-installable modality plugins.

Importing ``anybind`` is cheap: torch and the models load only when first used.

    import anybind
    model = anybind.load("runs/quickstart/bind")
    vectors = model.embed(["seven.png", "seven.wav", "a handwritten seven"])
"""

from __future__ import annotations

from anybind.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl", "load", "AnybindModel", "Tower"]


def __getattr__(name: str):
    # Heavy parts resolve on first use so that `anybind --help` never imports torch.
    if name == "load":
        from anybind.api import load

        return load
    if name in ("AnybindModel", "Tower"):
        from anybind.models import space

        return getattr(space, name)
    raise AttributeError(f"module 'anybind' has no attribute {name!r}")
