"""One upload, checked whole: its chunks add up to what its header declares, and it parses.

The servicer has already checked who sent it (the session and the device
key's signature over the header); these checks are about the bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from flwr.app import Error, Message

from stamen.contract.edge import CorruptRecords, parse_records, sha256
from stamen.protos.edge.v1 import edge_pb2
from stamen.server.edge.refusal import Refusal


class UploadRefused(Refusal):
    """An upload the server refuses for its bytes (counted in ``refused_uploads``)."""


def _corrupt(message: str) -> UploadRefused:
    return UploadRefused(
        grpc.StatusCode.INVALID_ARGUMENT, edge_pb2.ERROR_CODE_CORRUPT_UPLOAD, message
    )


async def first_chunk(chunks: AsyncIterator[edge_pb2.UploadChunk]) -> edge_pb2.UploadChunk | None:
    """The upload's first chunk, or ``None`` when it sent none."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None


async def no_more_chunks() -> AsyncIterator[edge_pb2.UploadChunk]:
    """The rest of an upload sent whole (``UploadWhole``): nothing."""
    return
    yield  # an async generator that yields nothing


async def receive(
    first: edge_pb2.UploadChunk,
    rest: AsyncIterator[edge_pb2.UploadChunk],
    header: edge_pb2.UploadHeader,
) -> bytes:
    """The whole upload, read no further than the size its header declares."""
    parts = [bytes(first.data)]
    size = len(first.data)
    async for chunk in rest:
        size += len(chunk.data)
        if size > header.total_bytes:
            raise _corrupt(
                f"upload carries more than the {header.total_bytes} bytes its header declares"
            )
        parts.append(bytes(chunk.data))
    data = b"".join(parts)
    if len(data) != header.total_bytes or sha256(data) != bytes(header.sha256):
        raise _corrupt(
            f"upload is corrupt: {len(data)} of {header.total_bytes} bytes, "
            "or its SHA-256 does not match"
        )
    return data


def reply_message(data: bytes, header: edge_pb2.UploadHeader, instruction: Message) -> Message:
    """The Flower reply to ``instruction`` that ``data`` holds (a RecordDict or a ReplyError)."""
    if header.is_error:
        error = edge_pb2.ReplyError()
        try:
            error.ParseFromString(data)
        except Exception:  # protobuf DecodeError from an untrusted peer
            raise _corrupt("error reply does not parse") from None
        return Message(Error(code=int(error.code), reason=error.reason), reply_to=instruction)
    try:
        content = parse_records(data)
    except CorruptRecords as problem:
        raise _corrupt(str(problem)) from None
    return Message(content, reply_to=instruction)
