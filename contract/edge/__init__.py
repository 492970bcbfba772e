"""The edge protocol's shared half: what the agent and the edge server must agree on byte for byte.

Both ``stamen.client.agent`` (the device side) and ``stamen.server.edge`` (the
server side) import this package and neither imports the other: record
serialization, the bytes task and upload signatures cover, the protocol version, typed
errors in gRPC trailers, device ids and the Ed25519 keys that sign challenges
and models. The messages themselves are in ``stamen.protos.edge.v1``.
"""

from stamen.contract.edge.identity import (
    JOIN_PREFIX,
    RUN_ENDED_PREFIX,
    TASK_PREFIX,
    UPLOAD_PREFIX,
    challenge_message,
    device_id,
    generate_key,
    load_private_key,
    load_public_key,
    node_id_of,
    public_bytes,
    save_private_key,
    save_public_key,
    verify_signature,
)
from stamen.contract.edge.wire import (
    ERROR_METADATA_KEY,
    PROTOCOL_VERSION,
    CorruptRecords,
    EdgeProtocolError,
    chunks,
    edge_error_of,
    error_trailers,
    parse_records,
    run_ended_signing_bytes,
    serialize_records,
    sha256,
    task_signing_bytes,
    upload_chunks,
    upload_signing_bytes,
)

__all__ = [
    "ERROR_METADATA_KEY",
    "JOIN_PREFIX",
    "PROTOCOL_VERSION",
    "RUN_ENDED_PREFIX",
    "TASK_PREFIX",
    "UPLOAD_PREFIX",
    "CorruptRecords",
    "EdgeProtocolError",
    "challenge_message",
    "chunks",
    "device_id",
    "edge_error_of",
    "error_trailers",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "node_id_of",
    "parse_records",
    "public_bytes",
    "run_ended_signing_bytes",
    "save_private_key",
    "save_public_key",
    "serialize_records",
    "sha256",
    "task_signing_bytes",
    "upload_chunks",
    "upload_signing_bytes",
    "verify_signature",
]
