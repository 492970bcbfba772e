"""Error feedback: what compression dropped this round is added back next round.

corrected = delta + residual; corrected is encoded; the new residual is
corrected - decoded. Over many rounds the sum of what the server decodes then
differs from the sum of the true deltas by just the current residual, which
stays bounded, instead of drifting (Seide et al. 2014; Karimireddy et al. 2019).

With ``momentum`` m > 0 it is Deep Gradient Compression's momentum correction and
momentum factor masking (Lin et al., "Deep Gradient Compression", ICLR 2018,
https://arxiv.org/abs/1712.01887): the device keeps a velocity ``u = m * u + delta`` and
accumulates ``u`` rather than ``delta`` into the residual, so a coordinate that is sent late
is sent with the momentum it would have had; where an entry was sent, its velocity is
zeroed, so the momentum of a sent entry does not push it again.

Running statistics (BatchNorm's running mean and variance) keep no residual: their delta is
the device's estimate minus the model's, so what one round does not send is already in the
next round's delta; carried over as well, it would be sent twice, long after the device's
data said it.

The residual and velocity are plain ``dict[str, np.ndarray]`` that the caller keeps in the
device's state between rounds; the codec itself holds no state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from stamen.compression.codecs import CodecPipeline
from stamen.compression.flat_update import ONE_SCALE, FlatLayout, encode_tensors
from stamen.models import is_running_statistic
from stamen.protos.update.v1 import update_pb2 as pb


@dataclass(frozen=True)
class ErrorFeedbackResult:
    """The encoded tensors, what the receiver will decode, and the state to keep."""

    tensors: list[pb.CompressedTensor]
    decoded: dict[str, np.ndarray]
    residual: dict[str, np.ndarray]
    velocity: dict[str, np.ndarray] | None = None
    """DGC's momentum (None without momentum correction)."""
    scales: bytes = b""
    """A flat update's float16 scales (see :mod:`stamen.compression.flat_update`)."""
    dense: bytes = b""
    """A flat update's mask of the tensors sent whole."""


class ErrorFeedback:
    """Wraps a :class:`CodecPipeline` so that compression error carries over to later rounds.

    Examples:
        >>> from stamen.compression.codec_stages import TopK
        >>> feedback = ErrorFeedback(CodecPipeline([TopK(0.5)]))
        >>> delta = {"w": np.array([1.0, 0.1], dtype=np.float32)}
        >>> first = feedback.encode(delta, None, np.random.default_rng(0))
        >>> first.decoded["w"].tolist(), first.residual["w"].tolist()
        ([1.0, 0.0], [0.0, 0.10000000149011612])
        >>> dgc = ErrorFeedback(CodecPipeline([TopK(0.5)]), momentum=0.5)
        >>> second = dgc.encode(delta, None, np.random.default_rng(0))
        >>> second.velocity["w"].tolist()  # zeroed where sent
        [0.0, 0.10000000149011612]
    """

    def __init__(
        self,
        pipeline: CodecPipeline,
        momentum: float = 0.0,
        *,
        flat: bool = False,
        layout: FlatLayout = ONE_SCALE,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {momentum!r}")
        self.pipeline = pipeline
        self.momentum = momentum
        self.flat = flat
        """Encode the tensors as one vector (``scope = model``)."""
        self.layout = layout
        """How that vector departs from one top-k at one scale."""

    @staticmethod
    def corrected(
        delta: Mapping[str, np.ndarray], residual: Mapping[str, np.ndarray] | None
    ) -> dict[str, np.ndarray]:
        """``delta + residual`` as float32.

        A residual entry that is missing (first round, new tensor) counts as zero and
        entries for names not in ``delta`` are dropped; a shape mismatch is a ValueError.
        """
        out: dict[str, np.ndarray] = {}
        for name, value in delta.items():
            corrected = np.asarray(value, dtype=np.float32)
            carried = None if residual is None else residual.get(name)
            if carried is not None:
                carried = np.asarray(carried, dtype=np.float32)
                if carried.shape != corrected.shape:
                    raise ValueError(
                        f"residual for {name!r} has shape {carried.shape}, "
                        f"the delta has {corrected.shape}"
                    )
                corrected = corrected + carried
            out[name] = corrected
        return out

    def encode(
        self,
        delta: Mapping[str, np.ndarray],
        residual: Mapping[str, np.ndarray] | None,
        rng: np.random.Generator,
        velocity: Mapping[str, np.ndarray] | None = None,
    ) -> ErrorFeedbackResult:
        """Encode ``delta + residual`` tensor by tensor and compute the next residual.

        With momentum, ``velocity`` (None on the first round) is the device's DGC momentum;
        the result carries the next one.
        """
        new_velocity: dict[str, np.ndarray] | None = None
        if self.momentum > 0:
            previous = self.corrected({k: np.zeros_like(v) for k, v in delta.items()}, velocity)
            new_velocity = {
                name: (np.float32(self.momentum) * previous[name] + np.asarray(value, np.float32))
                for name, value in delta.items()
            }
            delta = new_velocity
        corrected = self.corrected(delta, residual)
        # The reconstruction is exactly what the server decodes from the messages.
        encoded = encode_tensors(self.pipeline, corrected, rng, flat=self.flat, layout=self.layout)
        decoded = encoded.decoded
        new_residual = {
            name: np.zeros_like(value) if is_running_statistic(name) else value - decoded[name]
            for name, value in corrected.items()
        }
        if new_velocity is not None:
            new_velocity = {
                name: np.where(decoded[name] != 0, np.float32(0), value)
                for name, value in new_velocity.items()
            }
        return ErrorFeedbackResult(
            encoded.messages, decoded, new_residual, new_velocity, encoded.scales, encoded.dense
        )
