"""``anybind quickstart``: every stage on the sample world (see :mod:`anybind.quickstart.run`)."""

from anybind.quickstart.run import STAGES, TARGETS, Quickstart, summary, summary_table

__all__ = ["STAGES", "TARGETS", "Quickstart", "summary", "summary_table"]
