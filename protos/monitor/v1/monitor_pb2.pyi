from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_STARTING: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_PAUSING: _ClassVar[RunState]
    RUN_STATE_PAUSED: _ClassVar[RunState]
    RUN_STATE_STOPPING: _ClassVar[RunState]
    RUN_STATE_FINISHED: _ClassVar[RunState]
    RUN_STATE_STOPPED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]

class Health(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_UNSPECIFIED: _ClassVar[Health]
    HEALTH_OK: _ClassVar[Health]
    HEALTH_DEGRADED: _ClassVar[Health]
    HEALTH_FAILED: _ClassVar[Health]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_RUN_STARTED: _ClassVar[EventKind]
    EVENT_KIND_ROUND_STARTED: _ClassVar[EventKind]
    EVENT_KIND_ROUND_ENDED: _ClassVar[EventKind]
    EVENT_KIND_STATE_CHANGED: _ClassVar[EventKind]
    EVENT_KIND_SETTING_CHANGED: _ClassVar[EventKind]

class DeviceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_STATE_UNSPECIFIED: _ClassVar[DeviceState]
    DEVICE_STATE_IDLE: _ClassVar[DeviceState]
    DEVICE_STATE_TRAINING: _ClassVar[DeviceState]
    DEVICE_STATE_REJECTED: _ClassVar[DeviceState]
    DEVICE_STATE_FAILED: _ClassVar[DeviceState]
    DEVICE_STATE_STRAGGLING: _ClassVar[DeviceState]
    DEVICE_STATE_DROPPED_OUT: _ClassVar[DeviceState]
    DEVICE_STATE_NO_REPLY: _ClassVar[DeviceState]

class ControlAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTROL_ACTION_UNSPECIFIED: _ClassVar[ControlAction]
    CONTROL_ACTION_PAUSE: _ClassVar[ControlAction]
    CONTROL_ACTION_RESUME: _ClassVar[ControlAction]
    CONTROL_ACTION_STOP: _ClassVar[ControlAction]
    CONTROL_ACTION_SET_DEVICES_PER_ROUND: _ClassVar[ControlAction]
    CONTROL_ACTION_SET_DEADLINE: _ClassVar[ControlAction]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_STARTING: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_PAUSING: RunState
RUN_STATE_PAUSED: RunState
RUN_STATE_STOPPING: RunState
RUN_STATE_FINISHED: RunState
RUN_STATE_STOPPED: RunState
RUN_STATE_FAILED: RunState
HEALTH_UNSPECIFIED: Health
HEALTH_OK: Health
HEALTH_DEGRADED: Health
HEALTH_FAILED: Health
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_RUN_STARTED: EventKind
EVENT_KIND_ROUND_STARTED: EventKind
EVENT_KIND_ROUND_ENDED: EventKind
EVENT_KIND_STATE_CHANGED: EventKind
EVENT_KIND_SETTING_CHANGED: EventKind
DEVICE_STATE_UNSPECIFIED: DeviceState
DEVICE_STATE_IDLE: DeviceState
DEVICE_STATE_TRAINING: DeviceState
DEVICE_STATE_REJECTED: DeviceState
DEVICE_STATE_FAILED: DeviceState
DEVICE_STATE_STRAGGLING: DeviceState
DEVICE_STATE_DROPPED_OUT: DeviceState
DEVICE_STATE_NO_REPLY: DeviceState
CONTROL_ACTION_UNSPECIFIED: ControlAction
CONTROL_ACTION_PAUSE: ControlAction
CONTROL_ACTION_RESUME: ControlAction
CONTROL_ACTION_STOP: ControlAction
CONTROL_ACTION_SET_DEVICES_PER_ROUND: ControlAction
CONTROL_ACTION_SET_DEADLINE: ControlAction

class Rejection(_message.Message):
    __slots__ = ("node_id", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    reason: str
    def __init__(self, node_id: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RoundEvent(_message.Message):
    __slots__ = ("sequence", "kind", "round", "total_rounds", "time_unix", "state", "message", "participants", "stragglers", "dropouts", "num_stragglers", "num_dropouts", "accepted", "rejections", "accuracy", "loss", "train_loss", "tier_accuracy", "uplink_bytes", "downlink_bytes", "uplink_bytes_fp32", "downlink_bytes_fp32", "uplink_compression", "downlink_compression", "duration_seconds", "sparsity", "distillation", "privacy")
    class TierAccuracyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class DistillationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class PrivacyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    STRAGGLERS_FIELD_NUMBER: _ClassVar[int]
    DROPOUTS_FIELD_NUMBER: _ClassVar[int]
    NUM_STRAGGLERS_FIELD_NUMBER: _ClassVar[int]
    NUM_DROPOUTS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    TIER_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    UPLINK_BYTES_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPLINK_BYTES_FP32_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_BYTES_FP32_FIELD_NUMBER: _ClassVar[int]
    UPLINK_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SPARSITY_FIELD_NUMBER: _ClassVar[int]
    DISTILLATION_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: EventKind
    round: int
    total_rounds: int
    time_unix: float
    state: RunState
    message: str
    participants: _containers.RepeatedScalarFieldContainer[int]
    stragglers: _containers.RepeatedScalarFieldContainer[int]
    dropouts: _containers.RepeatedScalarFieldContainer[int]
    num_stragglers: int
    num_dropouts: int
    accepted: int
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    accuracy: float
    loss: float
    train_loss: float
    tier_accuracy: _containers.ScalarMap[str, float]
    uplink_bytes: int
    downlink_bytes: int
    uplink_bytes_fp32: int
    downlink_bytes_fp32: int
    uplink_compression: float
    downlink_compression: float
    duration_seconds: float
    sparsity: float
    distillation: _containers.ScalarMap[str, float]
    privacy: _containers.ScalarMap[str, float]
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., round: _Optional[int] = ..., total_rounds: _Optional[int] = ..., time_unix: _Optional[float] = ..., state: _Optional[_Union[RunState, str]] = ..., message: _Optional[str] = ..., participants: _Optional[_Iterable[int]] = ..., stragglers: _Optional[_Iterable[int]] = ..., dropouts: _Optional[_Iterable[int]] = ..., num_stragglers: _Optional[int] = ..., num_dropouts: _Optional[int] = ..., accepted: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., train_loss: _Optional[float] = ..., tier_accuracy: _Optional[_Mapping[str, float]] = ..., uplink_bytes: _Optional[int] = ..., downlink_bytes: _Optional[int] = ..., uplink_bytes_fp32: _Optional[int] = ..., downlink_bytes_fp32: _Optional[int] = ..., uplink_compression: _Optional[float] = ..., downlink_compression: _Optional[float] = ..., duration_seconds: _Optional[float] = ..., sparsity: _Optional[float] = ..., distillation: _Optional[_Mapping[str, float]] = ..., privacy: _Optional[_Mapping[str, float]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("after_sequence",)
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    def __init__(self, after_sequence: _Optional[int] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("node_id", "tier", "state", "last_seen_unix", "rounds", "uplink_bytes", "downlink_bytes", "rejected", "last_error")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    UPLINK_BYTES_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_BYTES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    tier: str
    state: DeviceState
    last_seen_unix: float
    rounds: int
    uplink_bytes: int
    downlink_bytes: int
    rejected: int
    last_error: str
    def __init__(self, node_id: _Optional[int] = ..., tier: _Optional[str] = ..., state: _Optional[_Union[DeviceState, str]] = ..., last_seen_unix: _Optional[float] = ..., rounds: _Optional[int] = ..., uplink_bytes: _Optional[int] = ..., downlink_bytes: _Optional[int] = ..., rejected: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceList(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class WatchDevicesRequest(_message.Message):
    __slots__ = ("table_id", "after_version", "min_interval_ms")
    TABLE_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MIN_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    table_id: str
    after_version: int
    min_interval_ms: int
    def __init__(self, table_id: _Optional[str] = ..., after_version: _Optional[int] = ..., min_interval_ms: _Optional[int] = ...) -> None: ...

class DeviceChanges(_message.Message):
    __slots__ = ("table_id", "version", "snapshot", "devices", "num_devices")
    TABLE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    NUM_DEVICES_FIELD_NUMBER: _ClassVar[int]
    table_id: str
    version: int
    snapshot: bool
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    num_devices: int
    def __init__(self, table_id: _Optional[str] = ..., version: _Optional[int] = ..., snapshot: _Optional[bool] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., num_devices: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunStatus(_message.Message):
    __slots__ = ("strategy", "config_json", "round", "total_rounds", "state", "health", "health_detail", "started_unix", "elapsed_seconds", "devices_per_round", "num_devices", "deadline_seconds", "accuracy", "loss", "uplink_bytes", "downlink_bytes", "rejected_updates", "role", "last_round", "state_message", "stragglers", "dropouts")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_DETAIL_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_PER_ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_DEVICES_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    UPLINK_BYTES_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_BYTES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_UPDATES_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LAST_ROUND_FIELD_NUMBER: _ClassVar[int]
    STATE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STRAGGLERS_FIELD_NUMBER: _ClassVar[int]
    DROPOUTS_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    config_json: str
    round: int
    total_rounds: int
    state: RunState
    health: Health
    health_detail: str
    started_unix: float
    elapsed_seconds: float
    devices_per_round: int
    num_devices: int
    deadline_seconds: float
    accuracy: float
    loss: float
    uplink_bytes: int
    downlink_bytes: int
    rejected_updates: int
    role: str
    last_round: RoundEvent
    state_message: str
    stragglers: int
    dropouts: int
    def __init__(self, strategy: _Optional[str] = ..., config_json: _Optional[str] = ..., round: _Optional[int] = ..., total_rounds: _Optional[int] = ..., state: _Optional[_Union[RunState, str]] = ..., health: _Optional[_Union[Health, str]] = ..., health_detail: _Optional[str] = ..., started_unix: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., devices_per_round: _Optional[int] = ..., num_devices: _Optional[int] = ..., deadline_seconds: _Optional[float] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., uplink_bytes: _Optional[int] = ..., downlink_bytes: _Optional[int] = ..., rejected_updates: _Optional[int] = ..., role: _Optional[str] = ..., last_round: _Optional[_Union[RoundEvent, _Mapping]] = ..., state_message: _Optional[str] = ..., stragglers: _Optional[int] = ..., dropouts: _Optional[int] = ...) -> None: ...

class ControlRequest(_message.Message):
    __slots__ = ("action", "devices_per_round", "deadline_seconds")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DEVICES_PER_ROUND_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    action: ControlAction
    devices_per_round: int
    deadline_seconds: float
    def __init__(self, action: _Optional[_Union[ControlAction, str]] = ..., devices_per_round: _Optional[int] = ..., deadline_seconds: _Optional[float] = ...) -> None: ...

class ControlReply(_message.Message):
    __slots__ = ("message", "status")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    message: str
    status: RunStatus
    def __init__(self, message: _Optional[str] = ..., status: _Optional[_Union[RunStatus, _Mapping]] = ...) -> None: ...
