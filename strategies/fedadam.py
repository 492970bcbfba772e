"""FedAdam: an Adam step on the server, with the aggregated decoded delta as pseudo-gradient.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
https://arxiv.org/abs/2003.00295 (Algorithm 2, without bias correction).

Each round the example-weighted mean of the decoded device deltas ``d`` drives
first and second moments kept across rounds::

    m = beta1 * m + (1 - beta1) * d
    v = beta2 * v + (1 - beta2) * d**2
    w = w + server_lr * m / (sqrt(v) + tau)

``v`` starts at ``tau**2`` as in the paper. Pruning masks are re-applied to the
new model by :class:`CompressedFedAvg`. :class:`~stamen.strategies.FedYogi`
changes only the ``v`` update.

Examples:
    >>> import numpy as np
    >>> from stamen.models import ModelSpec, build_model
    >>> from stamen.contract import TrainTask
    >>> spec = ModelSpec(name="mlp", input_shape=(64,), num_classes=10)
    >>> adam = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3,
    ...     model_factory=lambda: build_model(spec), task=TrainTask(model=spec.name))
    >>> new = adam.apply_delta({"w": np.zeros(1, np.float32)}, {"w": np.array([0.5])})
    >>> round(float(new["w"][0]), 4)  # 0.1 * 0.05 / (sqrt(0.0025 + 1e-8) + 1e-3)
    0.098
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from stamen.core.errors import ConfigError
from stamen.strategies.compressed_fedavg import CompressedFedAvg

LOG = logging.getLogger("stamen.strategies")


class FedAdam(CompressedFedAvg):
    """Compressed FedAvg whose server applies the mean delta through Adam.

    Args:
        server_lr: the server learning rate (eta in the paper).
        beta1: decay of the first moment, in [0, 1).
        beta2: decay of the second moment, in [0, 1).
        tau: adaptivity: added to ``sqrt(v)``, and ``v``'s initial value is ``tau**2``.
        **kwargs: as for :class:`CompressedFedAvg`.
    """

    def __init__(
        self,
        *,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        check_optimizer(server_lr, beta1, beta2, tau)
        super().__init__(**kwargs)
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def summary(self) -> None:
        """Log the strategy's settings."""
        super().summary()
        LOG.info(
            "%s: server lr %g, beta1 %g, beta2 %g, tau %g",
            type(self).__name__,
            self.server_lr,
            self.beta1,
            self.beta2,
            self.tau,
        )

    def state_dict(self) -> dict[str, Any]:
        """The base state plus the moments ``m`` and ``v`` (float64, as kept)."""
        return {**super().state_dict(), "m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        super().load_state_dict(state)
        self.m = {name: np.asarray(value, np.float64) for name, value in state["m"].items()}
        self.v = {name: np.asarray(value, np.float64) for name, value in state["v"].items()}

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Adam's second-moment update."""
        return self.beta2 * v + (1.0 - self.beta2) * np.square(delta)

    def apply_delta(
        self, base: dict[str, np.ndarray], delta: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Update the moments with this round's delta and take one optimizer step."""
        if not self.m:
            self.m = {name: np.zeros_like(d, dtype=np.float64) for name, d in delta.items()}
            self.v = {
                name: np.full_like(d, self.tau**2, dtype=np.float64) for name, d in delta.items()
            }
        result = {}
        for name, value in base.items():
            d = delta[name].astype(np.float64)
            self.m[name] = self.beta1 * self.m[name] + (1.0 - self.beta1) * d
            self.v[name] = self.second_moment(self.v[name], d)
            step = self.server_lr * self.m[name] / (np.sqrt(self.v[name]) + self.tau)
            result[name] = (value + step).astype(np.float32)
        return result


def check_optimizer(server_lr: float, beta1: float, beta2: float, tau: float) -> None:
    """One-line errors for server-optimizer settings out of range."""
    if not (math.isfinite(server_lr) and server_lr > 0):
        raise ConfigError(f"server_lr must be > 0; got {server_lr!r}")
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"{name} must be in [0, 1); got {beta!r}")
    if not (math.isfinite(tau) and tau > 0):
        raise ConfigError(f"tau must be > 0; got {tau!r}")
