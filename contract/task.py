"""What the server asks of a device in one round, and the record keys it travels under.

The server is the single source of truth for training knobs: each train message
carries a :class:`TrainTask` in its ``ConfigRecord``, parsed once on the device
by :meth:`TrainTask.from_config_record`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, TypeVar

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from stamen.compression import CodecScope, Lossless, QATConfig, UplinkCodecConfig, ValueFormat
from stamen.core.errors import ConfigError
from stamen.models import ModelName

MODEL_KEY = "stamen.model"
"""ArrayRecord holding the encoded global model (one uint8 array ``payload``)."""
UPDATE_KEY = "stamen.update"
"""ArrayRecord holding a device's encoded update (one uint8 array ``payload``)."""
PAYLOAD = "payload"
CONFIG_KEY = "config"
"""ConfigRecord with the task, the same key Flower's strategies use."""
DENSE_KEY = "arrays"
"""Dense float32 model, the key a plain Flower ClientApp reads and writes."""
METRICS_KEY = "metrics"
RESIDUAL_KEY = "stamen.residual"
"""Device state: the error-feedback residual, kept between rounds."""
VELOCITY_KEY = "stamen.velocity"
"""Device state: DGC's momentum (uplink momentum correction), kept between rounds."""
LAST_MODEL_KEY = "stamen.last-model"
"""Device state: the last model received, so that the next can come as a delta to it."""
NUM_EXAMPLES = "num-examples"
OUT_KEY = "out"
"""Run-config key, outside StamenConfig, naming the ServerApp's results directory."""

_NPY_MAGIC = b"\x93NUMPY"


def payload_bytes(array: Array) -> bytes:
    """The bytes a ``payload`` array (one-dimensional ``uint8``) carries.

    Flower keeps an ``Array`` as ``np.save`` output, and a 1-D byte array's contents are its
    last ``shape[0]`` bytes: they are sliced off without parsing the header, which
    ``Array.numpy()`` does at tens of microseconds a reply. Any other array goes through
    ``Array.numpy()``.
    """
    data = array.data
    shape = list(array.shape)
    if array.stype == "numpy.ndarray" and array.dtype == "uint8" and len(shape) == 1:
        size = math.prod(shape)
        if data[: len(_NPY_MAGIC)] == _NPY_MAGIC and len(data) > size:
            return data[len(data) - size :]
    return array.numpy().tobytes()


Record = TypeVar("Record", ArrayRecord, MetricRecord, ConfigRecord)


def records_of(content: RecordDict, kind: type[Record]) -> dict[str, Record]:
    """The records of one kind in a message's ``content``, as a plain dict to read.

    Flower's ``RecordDict.array_records`` and its siblings build a synchronised view on
    every access, about 6 µs; the server reads a reply's records several times, for each
    of a round's thousand replies.
    """
    return {key: record for key, record in content.items() if isinstance(record, kind)}


_PREFIX = "stamen."


@dataclass(frozen=True)
class TrainTask:
    """One round of local training, as the server configured it.

    It repeats some of :class:`stamen.config.TrainingSettings` on purpose: this
    is the device-facing contract, which devices parse without ever seeing a
    Stamen config, and which must stay stable while user-facing settings grow.
    """

    round_num: int = 0
    """Set by the strategy for each round."""
    model: ModelName = ModelName.LENET
    width: float = 1.0
    local_epochs: int = 1
    batch_size: int = 20
    lr: float = 0.05
    momentum: float = 0.0
    seed: int = 0
    qat: QATConfig | None = None
    """Fake-quantization settings; ``None`` trains in plain float."""
    uplink: UplinkCodecConfig = dataclasses.field(default_factory=UplinkCodecConfig)
    proximal_mu: float = 0.0
    """FedProx's proximal weight; 0 trains plain SGD. Optional on the wire (absent: 0)."""

    def to_config_record(self) -> ConfigRecord:
        """Flatten into a Flower ``ConfigRecord``."""
        values: dict[str, Any] = {
            "round": self.round_num,
            "model": self.model.value,
            "width": self.width,
            "local-epochs": self.local_epochs,
            "batch-size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "seed": self.seed,
            "qat": self.qat is not None,
            "qat-weight-bits": self.qat.weight_bits if self.qat else 8,
            "qat-activation-bits": self.qat.activation_bits if self.qat else 8,
            "topk-ratio": self.uplink.topk_ratio,
            "values": self.uplink.values.value,
            "error-feedback": self.uplink.error_feedback,
            "lossless": self.uplink.lossless.value,
            "stochastic-rounding": self.uplink.stochastic_rounding,
            "proximal-mu": self.proximal_mu,
            "scope": self.uplink.scope.value,
            "tensor-scales": self.uplink.tensor_scales,
            "whole-vectors": self.uplink.whole_vectors,
            "uplink-momentum": self.uplink.momentum,
        }
        record = ConfigRecord({f"{_PREFIX}{key}": value for key, value in values.items()})
        record["server-round"] = self.round_num
        return record

    @classmethod
    def from_config_record(cls, record: ConfigRecord) -> TrainTask:
        """Parse a task; a missing or malformed key raises a one-line ConfigError."""

        def get(key: str, kind: type) -> Any:
            full = f"{_PREFIX}{key}"
            if full not in record:
                raise ConfigError(f"train task is missing {full!r}")
            value = record[full]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind):
                raise ConfigError(f"train task {full!r} must be {kind.__name__}; got {value!r}")
            return value

        def enum_value(key: str, kind: type[Any]) -> Any:
            raw = get(key, str)
            try:
                return kind(raw)
            except ValueError:
                allowed = ", ".join(member.value for member in kind)
                raise ConfigError(
                    f"train task '{_PREFIX}{key}' must be one of {allowed}; got {raw!r}"
                ) from None

        # Optional keys: a task from a server that predates them still parses.
        proximal_mu = get("proximal-mu", float) if f"{_PREFIX}proximal-mu" in record else 0.0
        scope = (
            enum_value("scope", CodecScope) if f"{_PREFIX}scope" in record else CodecScope.TENSOR
        )
        momentum = get("uplink-momentum", float) if f"{_PREFIX}uplink-momentum" in record else 0.0
        tensor_scales = get("tensor-scales", bool) if f"{_PREFIX}tensor-scales" in record else False
        whole_vectors = get("whole-vectors", bool) if f"{_PREFIX}whole-vectors" in record else False
        if not proximal_mu >= 0:
            raise ConfigError(f"train task '{_PREFIX}proximal-mu' must be >= 0; got {proximal_mu}")
        qat = None
        if get("qat", bool):
            qat = QATConfig(
                weight_bits=get("qat-weight-bits", int),
                activation_bits=get("qat-activation-bits", int),
            )
        return cls(
            round_num=get("round", int),
            model=enum_value("model", ModelName),
            width=get("width", float),
            local_epochs=get("local-epochs", int),
            batch_size=get("batch-size", int),
            lr=get("lr", float),
            momentum=get("momentum", float),
            seed=get("seed", int),
            qat=qat,
            uplink=UplinkCodecConfig(
                topk_ratio=get("topk-ratio", float),
                values=enum_value("values", ValueFormat),
                error_feedback=get("error-feedback", bool),
                lossless=enum_value("lossless", Lossless),
                stochastic_rounding=get("stochastic-rounding", bool),
                scope=scope,
                tensor_scales=tensor_scales,
                whole_vectors=whole_vectors,
                momentum=momentum,
            ),
            proximal_mu=proximal_mu,
        )

    def replace(self, **changes: Any) -> TrainTask:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
