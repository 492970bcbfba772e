"""What travels on the edge protocol: records, signed tasks, chunks and typed errors.

Shared by the agent (``stamen.client.agent``) and the edge server
(``stamen.server.edge``), so both sides agree byte for byte.

Examples:
    >>> from flwr.app import ConfigRecord, RecordDict
    >>> data = serialize_records(RecordDict({"config": ConfigRecord({"lr": 0.1})}))
    >>> parse_records(data)["config"]["lr"]
    0.1
    >>> [len(c) for c in chunks(b"x" * 10, 4)]
    [4, 4, 2]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from google.protobuf.message import DecodeError

from stamen.contract.edge.identity import RUN_ENDED_PREFIX, TASK_PREFIX, UPLOAD_PREFIX
from stamen.core.errors import StamenError
from stamen.protos.edge.v1 import edge_pb2

PROTOCOL_VERSION = 1
ERROR_METADATA_KEY = "stamen-edge-error-bin"
"""Trailing-metadata key holding a serialized ``EdgeError``."""


class EdgeProtocolError(StamenError):
    """The other side refused a call with a typed edge error."""

    def __init__(self, code: int, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after
        """Seconds the server asked the caller to wait before trying again (0: none said)."""

    @property
    def code_name(self) -> str:
        """The error code's name, e.g. ``ERROR_CODE_UNKNOWN_DEVICE``."""
        return edge_pb2.ErrorCode.Name(self.code)


class CorruptRecords(StamenError, ValueError):
    """Bytes that should hold a serialized RecordDict do not."""


def serialize_records(records: RecordDict) -> bytes:
    """A Flower ``RecordDict`` as bytes (Flower's own protobuf form)."""
    return bytes(recorddict_to_proto(records).SerializeToString())


def parse_records(data: bytes) -> RecordDict:
    """The inverse of :func:`serialize_records`; raises :class:`CorruptRecords`."""
    proto = ProtoRecordDict()
    try:
        proto.ParseFromString(data)
        return recorddict_from_proto(proto)
    except (DecodeError, ValueError, TypeError, KeyError) as error:
        raise CorruptRecords(f"content is not a Flower RecordDict: {error}") from None


def sha256(data: bytes) -> bytes:
    """SHA-256 digest."""
    return hashlib.sha256(data).digest()


def task_signing_bytes(task: edge_pb2.Task, node_id: int) -> bytes:
    """The exact bytes the server signs for ``task`` sent to ``node_id``."""
    signed = edge_pb2.TaskSigningInput(
        task_id=task.task_id,
        message_type=task.message_type,
        group_id=task.group_id,
        run_id=task.run_id,
        content_sha256=task.content_sha256,
        deadline_unix=task.deadline_unix,
        node_id=node_id,
    )
    return TASK_PREFIX + signed.SerializeToString(deterministic=True)


def upload_signing_bytes(
    task_id: str, group_id: str, content_sha256: bytes, is_error: bool
) -> bytes:
    """The exact bytes a device signs for its upload answering ``task_id`` in round ``group_id``."""
    signed = edge_pb2.UploadSigningInput(
        task_id=task_id, group_id=group_id, content_sha256=content_sha256, is_error=is_error
    )
    return UPLOAD_PREFIX + signed.SerializeToString(deterministic=True)


def run_ended_signing_bytes(task: edge_pb2.Task, node_id: int, session: str) -> bytes:
    """The exact bytes the server signs for the run-ended notice ``task`` carries to
    ``node_id`` on the task stream opened with ``session``."""
    notice = task.run_ended
    signed = edge_pb2.RunEndedSigningInput(
        reason=notice.reason,
        message=notice.message,
        run_id=task.run_id,
        ended_unix=notice.ended_unix,
        node_id=node_id,
        session=session,
    )
    return RUN_ENDED_PREFIX + signed.SerializeToString(deterministic=True)


def upload_chunks(
    key: Ed25519PrivateKey,
    session: str,
    task: edge_pb2.Task,
    data: bytes,
    chunk_bytes: int,
    *,
    is_error: bool = False,
) -> Iterator[edge_pb2.UploadChunk]:
    """One upload of ``data`` answering ``task``: its header (in the first chunk) signed
    with the device's ``key``, then the data in chunks of ``chunk_bytes``."""
    digest = sha256(data)
    header = edge_pb2.UploadHeader(
        session=session,
        task_id=task.task_id,
        total_bytes=len(data),
        sha256=digest,
        is_error=is_error,
        signature=key.sign(upload_signing_bytes(task.task_id, task.group_id, digest, is_error)),
    )
    for index, piece in enumerate(chunks(data, chunk_bytes)):
        yield edge_pb2.UploadChunk(header=header if index == 0 else None, data=piece)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes (one empty piece for empty data)."""
    if not data:
        yield b""
        return
    for start in range(0, len(data), size):
        yield data[start : start + size]


def error_trailers(code: int, message: str, retry_after: float = 0.0) -> tuple[tuple[str, bytes]]:
    """The trailing metadata that carries a typed ``EdgeError`` with a refusal."""
    error = edge_pb2.EdgeError(
        code=code,  # type: ignore[arg-type]
        message=message,
        retry_after_seconds=retry_after,
    )
    return ((ERROR_METADATA_KEY, error.SerializeToString()),)


def edge_error_of(error: grpc.RpcError) -> EdgeProtocolError | None:
    """The typed edge error an RPC failed with, if the server sent one."""
    trailers = error.trailing_metadata() if isinstance(error, grpc.Call) else None
    for key, value in trailers or ():
        if key == ERROR_METADATA_KEY and isinstance(value, bytes):
            parsed = edge_pb2.EdgeError()
            try:
                parsed.ParseFromString(value)
            except DecodeError:
                return None
            return EdgeProtocolError(
                int(parsed.code), parsed.message, max(0.0, parsed.retry_after_seconds)
            )
    return None
