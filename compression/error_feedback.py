"""Error feedback: what compression dropped this round is added back next round.

corrected = delta + residual; corrected is encoded; the new residual is
corrected - decoded. Over many rounds the sum of what the server decodes then
differs from the sum of the true deltas by just the current residual, which
stays bounded, instead of drifting (Seide et al. 2014; Karimireddy et al. 2019).
The residual is a plain ``dict[str, np.ndarray]`` that the caller keeps in the
device's state between rounds; the codec itself holds no state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from stamen.compression.codecs import CodecPipeline
from stamen.protos.update.v1 import update_pb2 as pb


@dataclass(frozen=True)
class ErrorFeedbackResult:
    """The encoded tensors, what the receiver will decode, and the residual to keep."""

    tensors: list[pb.CompressedTensor]
    decoded: dict[str, np.ndarray]
    residual: dict[str, np.ndarray]


class ErrorFeedback:
    """Wraps a :class:`CodecPipeline` so that compression error carries over to later rounds.

    Examples:
        >>> from stamen.compression.codec_stages import TopK
        >>> feedback = ErrorFeedback(CodecPipeline([TopK(0.5)]))
        >>> delta = {"w": np.array([1.0, 0.1], dtype=np.float32)}
        >>> first = feedback.encode(delta, None, np.random.default_rng(0))
        >>> first.decoded["w"].tolist(), first.residual["w"].tolist()
        ([1.0, 0.0], [0.0, 0.10000000149011612])
    """

    def __init__(self, pipeline: CodecPipeline) -> None:
        self.pipeline = pipeline

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
    ) -> ErrorFeedbackResult:
        """Encode ``delta + residual`` tensor by tensor and compute the next residual."""
        tensors: list[pb.CompressedTensor] = []
        decoded: dict[str, np.ndarray] = {}
        new_residual: dict[str, np.ndarray] = {}
        for name, corrected in self.corrected(delta, residual).items():
            # The reconstruction is exactly what the server decodes from the message.
            message, decoded[name] = self.pipeline.encode_and_reconstruct(name, corrected, rng)
            new_residual[name] = corrected - decoded[name]
            tensors.append(message)
        return ErrorFeedbackResult(tensors, decoded, new_residual)
