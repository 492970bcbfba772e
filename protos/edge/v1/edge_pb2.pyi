from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_UNKNOWN_DEVICE: _ClassVar[ErrorCode]
    ERROR_CODE_REVOKED_DEVICE: _ClassVar[ErrorCode]
    ERROR_CODE_BAD_SIGNATURE: _ClassVar[ErrorCode]
    ERROR_CODE_BAD_SESSION: _ClassVar[ErrorCode]
    ERROR_CODE_PAYLOAD_TOO_LARGE: _ClassVar[ErrorCode]
    ERROR_CODE_CORRUPT_UPLOAD: _ClassVar[ErrorCode]
    ERROR_CODE_LATE: _ClassVar[ErrorCode]
    ERROR_CODE_BAD_REQUEST: _ClassVar[ErrorCode]
    ERROR_CODE_REPLACED: _ClassVar[ErrorCode]
    ERROR_CODE_RATE_LIMITED: _ClassVar[ErrorCode]
    ERROR_CODE_SESSION_EXPIRED: _ClassVar[ErrorCode]

class RunEndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_END_REASON_UNSPECIFIED: _ClassVar[RunEndReason]
    RUN_END_REASON_FINISHED: _ClassVar[RunEndReason]
    RUN_END_REASON_STOPPED: _ClassVar[RunEndReason]
    RUN_END_REASON_FAILED: _ClassVar[RunEndReason]
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_UNKNOWN_DEVICE: ErrorCode
ERROR_CODE_REVOKED_DEVICE: ErrorCode
ERROR_CODE_BAD_SIGNATURE: ErrorCode
ERROR_CODE_BAD_SESSION: ErrorCode
ERROR_CODE_PAYLOAD_TOO_LARGE: ErrorCode
ERROR_CODE_CORRUPT_UPLOAD: ErrorCode
ERROR_CODE_LATE: ErrorCode
ERROR_CODE_BAD_REQUEST: ErrorCode
ERROR_CODE_REPLACED: ErrorCode
ERROR_CODE_RATE_LIMITED: ErrorCode
ERROR_CODE_SESSION_EXPIRED: ErrorCode
RUN_END_REASON_UNSPECIFIED: RunEndReason
RUN_END_REASON_FINISHED: RunEndReason
RUN_END_REASON_STOPPED: RunEndReason
RUN_END_REASON_FAILED: RunEndReason

class EdgeError(_message.Message):
    __slots__ = ("code", "message", "retry_after_seconds")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    retry_after_seconds: float
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., retry_after_seconds: _Optional[float] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("protocol_version", "device_id", "public_key")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    device_id: str
    public_key: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., device_id: _Optional[str] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class JoinChallenge(_message.Message):
    __slots__ = ("challenge_id", "nonce", "expires_unix")
    CHALLENGE_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    challenge_id: str
    nonce: bytes
    expires_unix: float
    def __init__(self, challenge_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., expires_unix: _Optional[float] = ...) -> None: ...

class AuthenticateRequest(_message.Message):
    __slots__ = ("challenge_id", "device_id", "signature", "renews")
    CHALLENGE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    RENEWS_FIELD_NUMBER: _ClassVar[int]
    challenge_id: str
    device_id: str
    signature: bytes
    renews: str
    def __init__(self, challenge_id: _Optional[str] = ..., device_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., renews: _Optional[str] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("token", "node_id", "heartbeat_seconds", "max_payload_bytes", "chunk_bytes", "expires_unix")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    token: str
    node_id: int
    heartbeat_seconds: float
    max_payload_bytes: int
    chunk_bytes: int
    expires_unix: float
    def __init__(self, token: _Optional[str] = ..., node_id: _Optional[int] = ..., heartbeat_seconds: _Optional[float] = ..., max_payload_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., expires_unix: _Optional[float] = ...) -> None: ...

class TaskStreamRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: str
    def __init__(self, session: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "message_type", "group_id", "run_id", "content", "content_sha256", "deadline_unix", "signature", "run_ended")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    RUN_ENDED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    message_type: str
    group_id: str
    run_id: int
    content: bytes
    content_sha256: bytes
    deadline_unix: float
    signature: bytes
    run_ended: RunEnded
    def __init__(self, task_id: _Optional[str] = ..., message_type: _Optional[str] = ..., group_id: _Optional[str] = ..., run_id: _Optional[int] = ..., content: _Optional[bytes] = ..., content_sha256: _Optional[bytes] = ..., deadline_unix: _Optional[float] = ..., signature: _Optional[bytes] = ..., run_ended: _Optional[_Union[RunEnded, _Mapping]] = ...) -> None: ...

class RunEnded(_message.Message):
    __slots__ = ("reason", "message", "ended_unix", "signature")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ENDED_UNIX_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    reason: RunEndReason
    message: str
    ended_unix: float
    signature: bytes
    def __init__(self, reason: _Optional[_Union[RunEndReason, str]] = ..., message: _Optional[str] = ..., ended_unix: _Optional[float] = ..., signature: _Optional[bytes] = ...) -> None: ...

class RunEndedSigningInput(_message.Message):
    __slots__ = ("reason", "message", "run_id", "ended_unix", "node_id", "session")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ENDED_UNIX_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    reason: RunEndReason
    message: str
    run_id: int
    ended_unix: float
    node_id: int
    session: str
    def __init__(self, reason: _Optional[_Union[RunEndReason, str]] = ..., message: _Optional[str] = ..., run_id: _Optional[int] = ..., ended_unix: _Optional[float] = ..., node_id: _Optional[int] = ..., session: _Optional[str] = ...) -> None: ...

class TaskSigningInput(_message.Message):
    __slots__ = ("task_id", "message_type", "group_id", "run_id", "content_sha256", "deadline_unix", "node_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    message_type: str
    group_id: str
    run_id: int
    content_sha256: bytes
    deadline_unix: float
    node_id: int
    def __init__(self, task_id: _Optional[str] = ..., message_type: _Optional[str] = ..., group_id: _Optional[str] = ..., run_id: _Optional[int] = ..., content_sha256: _Optional[bytes] = ..., deadline_unix: _Optional[float] = ..., node_id: _Optional[int] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("session", "task_id", "total_bytes", "sha256", "is_error", "signature")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session: str
    task_id: str
    total_bytes: int
    sha256: bytes
    is_error: bool
    signature: bytes
    def __init__(self, session: _Optional[str] = ..., task_id: _Optional[str] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ..., is_error: _Optional[bool] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UploadSigningInput(_message.Message):
    __slots__ = ("task_id", "group_id", "content_sha256", "is_error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    group_id: str
    content_sha256: bytes
    is_error: bool
    def __init__(self, task_id: _Optional[str] = ..., group_id: _Optional[str] = ..., content_sha256: _Optional[bytes] = ..., is_error: _Optional[bool] = ...) -> None: ...

class ReplyError(_message.Message):
    __slots__ = ("code", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class UploadAck(_message.Message):
    __slots__ = ("task_id", "received_bytes")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    received_bytes: int
    def __init__(self, task_id: _Optional[str] = ..., received_bytes: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: str
    def __init__(self, session: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("server_unix", "heartbeat_seconds")
    SERVER_UNIX_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    server_unix: float
    heartbeat_seconds: float
    def __init__(self, server_unix: _Optional[float] = ..., heartbeat_seconds: _Optional[float] = ...) -> None: ...
