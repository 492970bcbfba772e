"""Settings of server-side distillation (FedDF) and of device tiers' students (``[distill]``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from stamen.compression import DistillConfig
from stamen.config.checks import require, require_member
from stamen.core.errors import ConfigError
from stamen.models import StudentSpec, parse_students


class UnlabelledSource(enum.StrEnum):
    """Where the server's unlabelled distillation inputs come from."""

    HOLDOUT = "holdout"
    """Training-set rows drawn with the run's seed; their labels are dropped."""
    FILE = "file"
    """The array ``x`` of the ``.npz`` file named by ``distill.file``."""


@dataclass(frozen=True)
class DistillSettings:
    """Server-side ensemble distillation (FedDF) and the students of device tiers."""

    enabled: bool = False
    temperature: float = 3.0
    """Softmax temperature of the KD loss."""
    steps: int = 100
    """Adam steps per distillation (each model, each round)."""
    batch_size: int = 128
    lr: float = 1e-3
    source: UnlabelledSource = UnlabelledSource.HOLDOUT
    holdout_size: int = 2000
    """Rows of the held-out unlabelled split (``source = "holdout"``)."""
    file: str = ""
    """An ``.npz`` file with an array ``x`` (``source = "file"``)."""
    students: str = ""
    """Tier students, ``"TIER=[MODEL@]WIDTH[:BITS], ..."``, e.g. ``"mcu=0.25:4,iot=0.5"``."""
    every_k: int = 1
    """Distil the global teacher into each student every k rounds (else the ensemble)."""
    edge_metrics: bool = False
    """At the end, export the global model and each student to INT8 ONNX and measure them
    (``edge`` in summary.json; needs the ``export`` extra). Works with distillation off too."""

    def __post_init__(self) -> None:
        require_member(self, "source", UnlabelledSource, "distill.source")
        require(self.steps >= 1, "distill.steps", ">= 1", self.steps)
        require(self.holdout_size >= 1, "distill.holdout_size", ">= 1", self.holdout_size)
        require(self.every_k >= 1, "distill.every_k", ">= 1", self.every_k)
        require(
            self.source is not UnlabelledSource.FILE or bool(self.file.strip()),
            "distill.file",
            'a path when distill.source = "file"',
            self.file,
        )
        try:
            self.to_distill_config(seed=0)
        except ConfigError as error:
            raise ConfigError(f"distill.{error}") from None
        try:
            self.student_specs()
        except ConfigError as error:
            raise ConfigError(f"distill.students: {error}") from None

    def to_distill_config(self, seed: int) -> DistillConfig:
        """The distillation maths' config."""
        return DistillConfig(
            temperature=self.temperature,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=seed,
        )

    def student_specs(self) -> tuple[StudentSpec, ...]:
        """The parsed ``students``."""
        return parse_students(self.students)
