"""Stamen's leaf layer: its errors, atomic files, SIGTERM as an interrupt, and what a Grid
may offer beyond Flower's.

Every other Stamen package may import this one; it imports none of them.
"""

from stamen.core.errors import ArtifactError, ConfigError, DataError, InvalidUpdate, StamenError
from stamen.core.files import write_atomic
from stamen.core.signals import Terminated, exit_status, signal_name, terminate_as_interrupt

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "InvalidUpdate",
    "StamenError",
    "Terminated",
    "__version__",
    "exit_status",
    "signal_name",
    "terminate_as_interrupt",
    "write_atomic",
]
