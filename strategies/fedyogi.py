"""FedYogi: FedAdam with Yogi's additive, sign-controlled second moment.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
https://arxiv.org/abs/2003.00295 (Algorithm 2); Yogi: Zaheer et al., "Adaptive
Methods for Nonconvex Optimization", NeurIPS 2018.

Where Adam decays ``v`` towards ``d**2`` multiplicatively, Yogi moves it by a
fixed fraction of ``d**2`` in the direction of ``d**2``::

    v = v - (1 - beta2) * d**2 * sign(v - d**2)

so ``v`` grows or shrinks additively and a sudden large delta cannot blow the
effective learning rate down at once. Everything else is
:class:`~stamen.strategies.FedAdam`.

Examples:
    >>> import numpy as np
    >>> from stamen.models import ModelSpec, build_model
    >>> from stamen.contract import TrainTask
    >>> spec = ModelSpec(name="mlp", input_shape=(64,), num_classes=10)
    >>> yogi = FedYogi(beta2=0.99, model_factory=lambda: build_model(spec),
    ...     task=TrainTask(model=spec.name))
    >>> float(yogi.second_moment(np.array([1.0]), np.array([2.0]))[0])  # 1 + 0.01 * 4
    1.04
"""

from __future__ import annotations

import numpy as np

from stamen.strategies.fedadam import FedAdam


class FedYogi(FedAdam):
    """Compressed FedAvg whose server applies the mean delta through Yogi."""

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Yogi's second-moment update."""
        square = np.square(delta)
        return v - (1.0 - self.beta2) * square * np.sign(v - square)
