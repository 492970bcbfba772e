"""What a round sends to its devices, and replies checked before the round closes.

Helpers of :class:`~stamen.strategies.CompressedFedAvg`: the records every device of a
round receives are built once and shared by all its messages (with downlink deltas, once
for each model the devices hold), a reply a streaming grid shows early is validated then
and its outcome kept until the round is aggregated, and with downlink deltas each reply
tells which model its device now holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType

from stamen.compression import DeltaPublisher, dense_nbytes, update_base_hash
from stamen.contract import PAYLOAD, UPDATE_KEY, payload_bytes, records_of
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


class HeldModels:
    """With downlink deltas: each device's payload, from the model it holds, and what its
    reply shows it holds now (``publisher`` None: every device gets the round's payload)."""

    def __init__(self, publisher: DeltaPublisher | None, max_update_bytes: int) -> None:
        self.publisher = publisher
        self.max_update_bytes = max_update_bytes

    def payload_for(self, node_id: int, sent: SentModel, message_type: str) -> bytes:
        """The change since the model the device holds (or the whole model, if smaller) for
        a training task on the published model; the round's one payload otherwise."""
        publisher = self.publisher
        if (
            publisher is None
            or message_type != MessageType.TRAIN
            or sent.model_hash != publisher.model_hash
        ):
            return sent.payload
        return publisher.payload_for(node_id)

    def note_reply(self, reply: Message, sent: SentModel, update: ValidUpdate | None) -> None:
        """Remember which model the device holds, from its reply.

        A Stamen update against the model the device was sent, valid or refused for its
        values, shows it holds that model. Any other reply (an error such as a delta it
        could not apply, a plain Flower reply, an update against another model or round,
        bytes that are no update) leaves it unknown: the whole model next time.
        """
        if self.publisher is None:
            return
        node_id = reply.metadata.src_node_id
        if update is not None:
            holds = not update.plain
        else:
            holds = self._claimed_base(reply, sent) == sent.model_hash
        if holds:
            self.publisher.confirm(node_id, sent.model_hash)
        else:
            self.publisher.forget(node_id)

    def _claimed_base(self, reply: Message, sent: SentModel) -> str | None:
        """The base model hash a refused reply's update names, if it is one."""
        if reply.has_error():
            return None
        record = records_of(reply.content, ArrayRecord).get(UPDATE_KEY)
        if record is None or PAYLOAD not in record:
            return None
        try:
            payload = payload_bytes(record[PAYLOAD])
        except Exception:  # a hostile array: the device gets the whole model next time
            return None
        shapes = {name: value.shape for name, value in sent.decoded.items()}
        return update_base_hash(payload, expected_shapes=shapes, max_bytes=self.max_update_bytes)
