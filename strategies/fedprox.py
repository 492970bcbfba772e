"""FedProx: compressed FedAvg whose devices add a proximal term to their local loss.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
https://arxiv.org/abs/1812.06127.

Each device minimises ``loss(w) + mu/2 * ||w - w_global||^2`` where ``w_global``
is the model it received, which keeps non-IID devices from drifting far from
the global model. The server sets ``mu``; it travels in the
:class:`~stamen.contract.task.TrainTask` (``proximal_mu``), and the device's trainer adds
the term. Aggregation is compressed FedAvg's, unchanged.

Examples:
    >>> from stamen.models import ModelSpec, build_model
    >>> from stamen.contract import TrainTask
    >>> spec = ModelSpec(name="mlp", input_shape=(64,), num_classes=10)
    >>> strategy = FedProx(proximal_mu=0.1, model_factory=lambda: build_model(spec),
    ...     task=TrainTask(model=spec.name))
    >>> strategy.task.proximal_mu
    0.1
"""

from __future__ import annotations

import logging
import math
from typing import Any

from stamen.core.errors import ConfigError
from stamen.strategies.compressed_fedavg import CompressedFedAvg

LOG = logging.getLogger("stamen.strategies")


class FedProx(CompressedFedAvg):
    """Compressed FedAvg with a server-configured proximal term on every device.

    Args:
        proximal_mu: the proximal weight ``mu`` (> 0; 0 would be plain FedAvg).
        **kwargs: as for :class:`CompressedFedAvg`.
    """

    def __init__(self, *, proximal_mu: float = 0.01, **kwargs: Any) -> None:
        if not (math.isfinite(proximal_mu) and proximal_mu >= 0):
            raise ConfigError(f"proximal_mu must be a finite number >= 0; got {proximal_mu!r}")
        super().__init__(**kwargs)
        self.task = self.task.replace(proximal_mu=float(proximal_mu))

    def summary(self) -> None:
        """Log the strategy's settings."""
        super().summary()
        LOG.info("FedProx: proximal mu %g", self.task.proximal_mu)
