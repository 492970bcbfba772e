"""What the server signs: each task (and so each model) it sends, and the run's end.

A round's messages share their records (the strategy builds them once), so
:class:`TaskSealer` serializes and hashes a round's content once and signs
each task for its own device: a thousand devices cost one serialization and a
thousand signatures, not a thousand serializations.

Examples:
    >>> from flwr.app import ConfigRecord, RecordDict
    >>> from stamen.contract.edge import generate_key, public_bytes, verify_signature
    >>> from stamen.server.edge import EdgeGrid
    >>> key = generate_key()
    >>> grid, sealer = EdgeGrid(key), TaskSealer(key)
    >>> content = RecordDict({"config": ConfigRecord({"round": 1})})
    >>> messages = [grid.create_message(content, "train", node, "1") for node in (7, 8)]
    >>> tasks = [sealer.seal(m, f"t{i}", 1, 0.0) for i, m in enumerate(messages)]
    >>> tasks[0].content == tasks[1].content, tasks[0].signature == tasks[1].signature
    (True, False)
    >>> verify_signature(public_bytes(key.public_key()), tasks[1].signature,
    ...                  task_signing_bytes(tasks[1], 8))
    True
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Message

from stamen.contract.edge import (
    run_ended_signing_bytes,
    serialize_records,
    sha256,
    task_signing_bytes,
)
from stamen.protos.edge.v1 import edge_pb2
from stamen.server.edge.rounds import RunEnd


class TaskSealer:
    """Signs tasks with the model-signing key, serializing each distinct content once."""

    def __init__(self, signing_key: Ed25519PrivateKey) -> None:
        self._key = signing_key
        self._last: tuple[tuple[str, ...], list[object], bytes, bytes] | None = None
        """The names and records last serialized (held, so that no other object can take
        their place), their bytes and hash."""

    def seal(self, message: Message, task_id: str, run_id: int, deadline: float) -> edge_pb2.Task:
        """The signed task carrying ``message`` to its device (``deadline`` 0: none)."""
        content, digest = self._serialized(message)
        task = edge_pb2.Task(
            task_id=task_id,
            message_type=message.metadata.message_type,
            group_id=message.metadata.group_id,
            run_id=run_id,
            content=content,
            content_sha256=digest,
            deadline_unix=deadline,
        )
        task.signature = self._key.sign(task_signing_bytes(task, message.metadata.dst_node_id))
        return task

    def _serialized(self, message: Message) -> tuple[bytes, bytes]:
        # The very same record objects under the same names serialize to the same bytes
        # (a round's messages are sealed once all exist, so none changes in between).
        names = tuple(message.content)
        records: list[object] = [message.content[name] for name in names]
        last = self._last
        if (
            last is not None
            and last[0] == names
            and all(a is b for a, b in zip(last[1], records, strict=True))
        ):
            return last[2], last[3]
        content = serialize_records(message.content)
        digest = sha256(content)
        self._last = (names, records, content, digest)
        return content, digest


def seal_run_end(
    signing_key: Ed25519PrivateKey, end: RunEnd, run_id: int, node_id: int, session: str
) -> edge_pb2.Task:
    """The signed notice of ``end`` for ``node_id``'s task stream opened with ``session``."""
    task = edge_pb2.Task(
        run_id=run_id,
        run_ended=edge_pb2.RunEnded(
            reason=end.reason.wire, message=end.message, ended_unix=end.ended_unix
        ),
    )
    task.run_ended.signature = signing_key.sign(run_ended_signing_bytes(task, node_id, session))
    return task
