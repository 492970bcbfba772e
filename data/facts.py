"""What the config needs to know about a dataset before any device loads it.

Defaults that fit the dataset (fleet size, local steps, the model) follow from three
facts: how many training rows there are, how many natural clients they belong to, and
whether a sample is an image. Built-in datasets state theirs in a table, so resolving a
config does not load 60,000 images; a user's file is loaded (once per process, as the
run would load it anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

from stamen.data.dataset import Dataset


@dataclass(frozen=True)
class DatasetFacts:
    """The size and shape facts that derived defaults follow from.

    Examples:
        >>> from stamen.data import load_dataset
        >>> facts_of(load_dataset("digits"))
        DatasetFacts(num_train=1437, num_clients=0, images=True)
    """

    num_train: int
    num_clients: int
    """Distinct ``client_train`` ids; 0 when the data has no natural partition."""
    images: bool
    """Samples are ``(C, H, W)`` images rather than feature vectors."""


def facts_of(dataset: Dataset) -> DatasetFacts:
    """The facts of a loaded dataset."""
    clients = dataset.client_train
    return DatasetFacts(
        num_train=dataset.num_train,
        num_clients=0 if clients is None else len(set(clients.tolist())),
        images=len(dataset.input_shape) == 3,
    )
