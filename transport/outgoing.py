"""What a round sends to its devices, and replies checked before the round closes.

Helpers of :class:`~stamen.strategies.CompressedFedAvg`: the records every device of a
round receives are built once and shared by all its messages, and a reply a streaming grid
shows early is validated then and its outcome kept until the round is aggregated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from stamen.compression import dense_nbytes
from stamen.contract import PAYLOAD
from stamen.core.errors import InvalidUpdate
from stamen.transport.reply_validation import SentModel, ValidUpdate


@dataclass(frozen=True)
class CheckedReply:
    """A reply validated as it arrived, against the model ``sent`` (and its round)."""

    sent: SentModel
    result: ValidUpdate | InvalidUpdate

    def outcome(self) -> ValidUpdate:
        """The valid update, or the rejection raised again."""
        if isinstance(self.result, InvalidUpdate):
            raise self.result
        return self.result


class OutgoingRecords:
    """One round's model and task records, as sent to every device that gets ``payload``
    (the round's one payload, or with downlink deltas the one for a device's kept model)."""

    def __init__(self, sent: SentModel, config: ConfigRecord, payload: bytes) -> None:
        self.sent = sent
        self.model = ArrayRecord({PAYLOAD: Array(np.frombuffer(payload, np.uint8))})
        self.config = config
        self.dense_bytes = dense_nbytes(sent.dense)
        self._dense: ArrayRecord | None = None

    def dense(self) -> ArrayRecord:
        """The dense model, for plain Flower clients."""
        if self._dense is None:
            self._dense = ArrayRecord({k: Array(v) for k, v in self.sent.dense.items()})
        return self._dense
