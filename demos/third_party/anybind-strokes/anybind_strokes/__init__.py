"""anybind-strokes: pen-stroke trajectories (a digit being drawn) as an anybind modality."""

import anybind
from anybind.specs import ModalitySpec


@anybind.hookimpl
def register_modalities(register):
    register(ModalitySpec(
        name="strokes", suffixes=(".strokes",), description="Pen trajectories ('dx dy pen' lines), transformer",
        loader="anybind_strokes.trace:load_strokes", world="anybind_strokes.trace:build",
        encoder="anybind_strokes.encoder:StrokeEncoder", train={"steps": 450, "batch_size": 64, "lr": 2e-3},
    ))
