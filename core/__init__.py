"""Stamen: federated edge learning on Flower and PyTorch.

Devices train quantization-aware, pruned models on local data, send compressed
updates, and receive compact global models. The same Flower apps run in a
simulation of many virtual devices or on real devices.
"""

from stamen.errors import ArtifactError, ConfigError, DataError, InvalidUpdate, StamenError

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "InvalidUpdate",
    "StamenError",
    "__version__",
]
