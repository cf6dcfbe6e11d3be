"""anybind-diffusion: Stable Diffusion (diffusers) as the image decoder.

``sd`` decodes a conditioning sequence (the token states a text encoder gives a caption,
or the output projector's prediction of them) into images. ``anybind train decoder``
trains a tiny one on the sample world; ``--decoder sd:PATH`` loads any local diffusers
Stable Diffusion directory.
"""

import anybind
from anybind.specs import DecoderSpec


@anybind.hookimpl
def register_decoders(register):
    register(
        DecoderSpec(
            name="sd",
            modality="image",
            factory="anybind_diffusion.decoder:load_decoder",
            trainer="anybind_diffusion.train:train_decoder",
            description="Stable Diffusion via diffusers (tiny, trained on the sample world, or any local SD checkpoint)",
            token="IMG",
            prompts="anybind_diffusion.prompts:PROMPTS",
            prompt_encoder="anybind_diffusion.decoder:load_prompt_encoder",
            judge="anybind_diffusion.judge:ImageJudge",
        )
    )
