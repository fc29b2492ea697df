"""A fake of the Fly Machines API and Fly Proxy, for testing the fly driver without network."""

from .api import TEST_TIMINGS, FakeFlyMachinesAPI, Gate, Injection
from .deviations import SPEC_DEVIATIONS
from .sandbox import processes_under
from .spec import SPEC_PATH, SpecValidator, SpecViolation

__all__ = [
    "SPEC_DEVIATIONS",
    "SPEC_PATH",
    "TEST_TIMINGS",
    "FakeFlyMachinesAPI",
    "Gate",
    "Injection",
    "SpecValidator",
    "SpecViolation",
    "processes_under",
]
