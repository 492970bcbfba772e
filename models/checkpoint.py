"""A saved model: its architecture, its exchanged weights, and where it is meant to run.

A run writes one file per model it produced (``model.pt`` for the global model and
``model-<tier>.pt`` for each tier's student), and ``stamen export`` reads them back. The file
is an ordinary ``torch.save`` of plain values and tensors, read with ``weights_only=True``, so
loading one never runs code.

Examples:
    >>> import tempfile, pathlib
    >>> from stamen.models import ModelSpec, build_model, exchanged_state
    >>> spec = ModelSpec("mlp", (8,), num_classes=3)
    >>> saved = SavedModel(spec, exchanged_state(build_model(spec, seed=0)), dataset="digits")
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.pt"
    >>> save_model_file(saved, path)
    >>> loaded = load_model_file(path)
    >>> loaded.spec == spec, loaded.tier, sorted(loaded.state) == sorted(saved.state)
    (True, None, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stamen.core.errors import ConfigError, StamenError
from stamen.models.build import build_model
from stamen.models.spec import ModelSpec
from stamen.models.state import load_exchanged_state

FORMAT = "stamen.model.v1"
GLOBAL_MODEL_FILE = "model.pt"


class ModelFileError(StamenError, ValueError):
    """A saved model file is missing, unreadable or not a Stamen model."""


def tier_model_file(tier: str) -> str:
    """The file name a run uses for a tier's model.

    Examples:
        >>> tier_model_file("mcu")
        'model-mcu.pt'
    """
    return f"model-{tier}.pt"


@dataclass(frozen=True)
class SavedModel:
    """A model as a run hands it to export.

    Attributes:
        spec: The architecture and its input and output shapes.
        state: The exchanged tensors (``stamen.models.exchanged_state``), float32.
        tier: The device tier this model is for; ``None`` for the global model.
        dataset: The dataset spec it was trained on (for calibration and verification).
        weight_bits: The QAT weight precision the model was trained for, if any.
    """

    spec: ModelSpec
    state: dict[str, np.ndarray] = field(repr=False)
    tier: str | None = None
    dataset: str | None = None
    weight_bits: int | None = None

    def build(self) -> nn.Module:
        """A float model of this architecture holding these weights, in eval mode."""
        model = build_model(self.spec)
        load_exchanged_state(model, self.state)
        return model.eval()


def save_model_file(saved: SavedModel, path: Path) -> None:
    """Write ``saved`` to ``path`` (parent folders are created).

    Examples:
        >>> import tempfile, pathlib
        >>> from stamen.models import ModelSpec, build_model, exchanged_state
        >>> spec = ModelSpec("mlp", (8,), num_classes=3)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "run" / tier_model_file("mcu")
        >>> save_model_file(SavedModel(spec, exchanged_state(build_model(spec)), "mcu"), path)
        >>> path.name, path.is_file()
        ('model-mcu.pt', True)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = saved.spec
    torch.save(
        {
            "format": FORMAT,
            "spec": {
                "name": spec.name.value,
                "input_shape": list(spec.input_shape),
                "num_classes": spec.num_classes,
                "width": spec.width,
            },
            "tier": saved.tier,
            "dataset": saved.dataset,
            "weight_bits": saved.weight_bits,
            "state": {name: torch.from_numpy(np.array(v)) for name, v in saved.state.items()},
        },
        path,
    )


def load_model_file(path: Path) -> SavedModel:
    """Read a model file; any problem is one ``ModelFileError`` line naming the file.

    Examples:
        >>> load_model_file(Path("no/such/model.pt"))
        Traceback (most recent call last):
        ...
        stamen.models.checkpoint.ModelFileError: model file not found: no/such/model.pt
    """
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types (struct, pickle, zip, runtime)
        raise ModelFileError(f"cannot read model file {path}: {error}".splitlines()[0]) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a Stamen model file ({FORMAT})")
    try:
        spec_fields = raw["spec"]
        spec = ModelSpec(
            name=spec_fields["name"],
            input_shape=tuple(spec_fields["input_shape"]),
            num_classes=spec_fields["num_classes"],
            width=spec_fields["width"],
        )
        state = {name: tensor.numpy() for name, tensor in raw["state"].items()}
        saved = SavedModel(spec, state, raw["tier"], raw["dataset"], raw["weight_bits"])
        saved.build()  # the weights must fit the architecture
    except (KeyError, TypeError, AttributeError, ValueError, ConfigError) as error:
        raise ModelFileError(f"model file {path} is malformed: {error}") from None
    return saved
