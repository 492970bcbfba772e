"""Defaults that fit the dataset: fleet size, devices per round, local steps and the model.

One fixed fleet (100 devices, 10 a round, one epoch of batches of 20) suits MNIST's 60,000
rows and starves everything smaller: 1,437 digits over 100 devices is 14 rows each, one
SGD step a round, and the federation never leaves 10% accuracy. So the settings below are
not constants but follow, by one rule, from three facts of the dataset
(:class:`~stamen.data.DatasetFacts`: training rows ``n``, natural clients ``C``, images or
feature vectors) and from whatever the user did set. Any of them set explicitly, by the
command's defaults, the TOML file, ``--set`` or a flag, is kept as given, and the
others follow from it.

1. **Partition**: ``natural`` (one device per client) when the data names its clients, no
   ``samples_per_device`` is set and ``num_devices`` is unset or equals ``C``; otherwise
   the ``[data]`` default, Dirichlet(0.3).
2. **Fleet**: ``C`` devices under the natural partition; otherwise one device per
   :data:`ROWS_PER_DEVICE` training rows, between 1 and :data:`MAX_DEVICES`
   (``max(1, min(100, n // 100))``); :data:`MAX_DEVICES` when every device draws its own
   ``samples_per_device`` rows, since the data then does not bound the fleet.
3. **Devices per round**: ``min(10, num_devices)``.
4. **Batch size**: with ``m`` rows per device (``samples_per_device``, else
   ``n // num_devices``), ``min(20, ceil(m / 5))``: at least
   :data:`MIN_BATCHES_PER_EPOCH` batches an epoch, at most :data:`MAX_BATCH_SIZE` rows a
   batch.
5. **Local epochs**: the fewest epochs that give :data:`MIN_LOCAL_STEPS` SGD steps a round,
   ``ceil(30 / ceil(m / batch_size))``: the 30 steps MNIST's 600 rows a device give in one
   epoch. With the batch rule that is at most 6 epochs whenever a device holds 5 rows or
   more.
6. **Model**: ``lenet`` for images, ``mlp`` for feature vectors.

The learning rate is not derived: the rule keeps every dataset in the regime MNIST's SGD
rate of 0.05 was chosen for (batches of at most 20, at least 30 steps a round). On MNIST
the rule gives the fixed fleet back exactly (100 devices, 10 a round, batch 20, one epoch
of 30 steps), so MNIST runs and their benchmarks are unchanged.

Examples:
    >>> from stamen.data import DatasetFacts
    >>> digits = DatasetFacts(num_train=1437, num_clients=0, images=True)
    >>> derive(digits)
    DerivedDefaults(partition=None, num_devices=14, devices_per_round=10, batch_size=20,
                    local_epochs=5, model='lenet')
    >>> derive(digits, num_devices=100).local_epochs  # 14 rows a device: 5 batches of 3
    6
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stamen.data import DatasetFacts, PartitionScheme

MAX_DEVICES = 100
ROWS_PER_DEVICE = 100
"""Training rows per device the fleet size aims for: five full batches."""
MAX_DEVICES_PER_ROUND = 10
MAX_BATCH_SIZE = 20
MIN_BATCHES_PER_EPOCH = 5
MIN_LOCAL_STEPS = 30
"""SGD steps each device takes a round, at least: what one epoch gives MNIST's devices."""

DERIVED_KEYS: tuple[str, ...] = (
    "data.partition",
    "federation.num_devices",
    "federation.devices_per_round",
    "training.batch_size",
    "training.local_epochs",
    "training.model",
)
"""The config keys :func:`derive` fills in when nothing set them."""


@dataclass(frozen=True)
class DerivedDefaults:
    """What the rule gives for one dataset and the user's own settings.

    ``partition`` is None where the rule leaves the ``[data]`` default in place.
    """

    partition: str | None
    num_devices: int
    devices_per_round: int
    batch_size: int
    local_epochs: int
    model: str

    def as_flat(self) -> dict[str, str | int]:
        """The derived values as ``section.key`` entries, for the config loader."""
        flat: dict[str, str | int] = {
            "federation.num_devices": self.num_devices,
            "federation.devices_per_round": self.devices_per_round,
            "training.batch_size": self.batch_size,
            "training.local_epochs": self.local_epochs,
            "training.model": self.model,
        }
        if self.partition is not None:
            flat["data.partition"] = self.partition
        return flat


def derive(
    facts: DatasetFacts,
    *,
    partition: str | None = None,
    num_devices: int | None = None,
    devices_per_round: int | None = None,
    samples_per_device: int = 0,
    batch_size: int | None = None,
) -> DerivedDefaults:
    """Apply the rule to ``facts``, keeping every setting the user gave (not None).

    Examples:
        >>> from stamen.data import DatasetFacts
        >>> heart = DatasetFacts(num_train=486, num_clients=4, images=False)
        >>> derive(heart)
        DerivedDefaults(partition='natural', num_devices=4, devices_per_round=4,
                        batch_size=20, local_epochs=5, model='mlp')
    """
    natural = PartitionScheme.NATURAL.value
    if (
        partition is None
        and facts.num_clients > 0
        and samples_per_device == 0
        and num_devices in (None, facts.num_clients)
    ):
        partition = natural
    if num_devices is None:
        if samples_per_device > 0:
            num_devices = MAX_DEVICES
        elif partition == natural and facts.num_clients > 0:
            num_devices = facts.num_clients
        else:
            num_devices = max(1, min(MAX_DEVICES, facts.num_train // ROWS_PER_DEVICE))
    # Out-of-range settings still give numbers here; their own checks reject them later.
    rows = max(1, samples_per_device or facts.num_train // max(1, num_devices))
    if batch_size is None:
        batch_size = min(MAX_BATCH_SIZE, math.ceil(rows / MIN_BATCHES_PER_EPOCH))
    steps_per_epoch = math.ceil(rows / max(1, batch_size))
    return DerivedDefaults(
        partition=partition,
        num_devices=num_devices,
        devices_per_round=devices_per_round or min(MAX_DEVICES_PER_ROUND, num_devices),
        batch_size=batch_size,
        local_epochs=math.ceil(MIN_LOCAL_STEPS / steps_per_epoch),
        model="lenet" if facts.images else "mlp",
    )
