"""Stamen's leaf layer: its errors, atomic files, and what a Grid may offer beyond Flower's.

Every other Stamen package may import this one; it imports none of them.
"""

from stamen.core.errors import ArtifactError, ConfigError, DataError, InvalidUpdate, StamenError
from stamen.core.files import write_atomic

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "InvalidUpdate",
    "StamenError",
    "__version__",
    "write_atomic",
]
