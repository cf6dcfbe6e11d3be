"""anybind-audiogen: speech out, a second output modality added without touching core.

``audiogen`` decodes a conditioning sequence (the token states a sentence encoder gives a
caption such as "the spoken word seven", or the output projector's prediction of them) into a
16 kHz waveform: latent diffusion over log-mel spectrograms (diffusers' ``AutoencoderKL``,
``UNet2DConditionModel`` and DDIM, as AudioLDM builds on Stable Diffusion's parts) and a
Griffin-Lim vocoder. ``anybind train decoder --decoder audiogen`` trains one on the sample
world's speech; ``--decoder audiogen:PATH`` loads a trained directory.
"""

import anybind
from anybind.specs import DecoderSpec


@anybind.hookimpl
def register_decoders(register):
    register(
        DecoderSpec(
            name="audiogen",
            modality="audio",
            factory="anybind_audiogen.decoder:load_decoder",
            trainer="anybind_audiogen.train:train_decoder",
            description="Speech: latent diffusion over log-mel (diffusers) + Griffin-Lim, trained on the sample world",
            token="AUD",
            prompts="anybind_audiogen.prompts:PROMPTS",
            prompt_encoder="anybind_diffusion.decoder:load_prompt_encoder",
            judge="anybind_audiogen.judge:SpeechJudge",
            media="anybind_audiogen.media:AUDIO",
        )
    )
