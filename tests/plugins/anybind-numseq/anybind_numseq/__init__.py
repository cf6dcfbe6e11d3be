"""A real, tiny modality used by anybind's own tests: whitespace-separated numbers."""

import anybind
from anybind.specs import ModalitySpec


@anybind.hookimpl
def register_modalities(register):
    register(
        ModalitySpec(
            name="numseq",
            description="1-D number sequences (test plugin)",
            suffixes=(".numseq",),
            loader="anybind_numseq.encoder:load_numseq",
            encoder="anybind_numseq.encoder:NumSeqEncoder",
        )
    )


@anybind.hookimpl
def register_commands(cli):
    @cli.command(name="numseq-stats")
    def numseq_stats():
        """Say hello from the numseq test plugin."""
        print("numseq plugin is alive")
