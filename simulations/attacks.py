"""Attack harness for tests and benchmarks: some devices send malicious updates.

A fraction of the fleet, chosen from the run's seed, replaces its honest reply
with an attack the server cannot tell from a real device's by its format: the
honest encoded delta is decoded, altered, and re-encoded with the task's own
uplink codec (sign-flipped or scaled, random noise), or sent as a dense-float
NaN or Inf update, or the device's first update is replayed in every later
round (a stale replay). Everything the server sees went through the real
ClientApp, the real codec and the real wire format. A ``dense`` attacker
instead replies as a plain Flower ClientApp would: trained-looking dense
weights under ``arrays``, far from the global model, with a large
self-reported ``num-examples``.

The harness wraps a ``ClientApp``, so it runs unchanged on any backend.

Examples:
    >>> sorted(attacked_partitions(num_devices=10, fraction=0.2, seed=0))
    [0, 4]
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from stamen.compression import (
    DecodedUpdate,
    UplinkCodec,
    UplinkCodecConfig,
    ValueFormat,
    decode_model,
    decode_update,
)
from stamen.compression.wire import parse, serialize
from stamen.config import AttackKind, AttackSettings
from stamen.contract import (
    CONFIG_KEY,
    DENSE_KEY,
    METRICS_KEY,
    MODEL_KEY,
    NUM_EXAMPLES,
    PAYLOAD,
    UPDATE_KEY,
    TrainTask,
    payload_bytes,
)
from stamen.protos.update.v1 import update_pb2 as pb

REPLAY_KEY = "stamen.attack.replay"
"""Device state of a stale-replay attacker: the update it keeps resending."""
DENSE_NUM_EXAMPLES = 10**6
"""The example count a dense attacker claims: far more than any simulated device holds,
and within the bound a server accepts, so that only a server-side cap stops it."""


def attacked_partitions(num_devices: int, fraction: float, seed: int) -> frozenset[int]:
    """The partition ids that attack: ``round(fraction * num_devices)`` of them, by seed."""
    return frozenset(attackers_of(num_devices, fraction, seed).tolist())


def attackers_of(num_devices: int, fraction: float, seed: int) -> np.ndarray:
    """:func:`attacked_partitions` as one sorted array: 8 bytes an attacker, not a Python int
    in a set (a fifth of a million devices would be 200,000 of them)."""
    count = round(fraction * num_devices)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA77AC]))
    return np.sort(rng.choice(num_devices, size=count, replace=False)).astype(np.int64)


def with_attack(app: ClientApp, settings: AttackSettings, num_devices: int, seed: int) -> ClientApp:
    """``app`` with its attacking devices' training replies replaced; unchanged if no attack."""
    if not settings.active:
        return app
    attackers = attackers_of(num_devices, settings.fraction, seed)

    def attacks(partition_id: int) -> bool:
        at = int(np.searchsorted(attackers, partition_id))
        return at < len(attackers) and int(attackers[at]) == partition_id

    wrapped = ClientApp()

    @wrapped.train()
    def train(message: Message, context: Context) -> Message:
        reply = app(message, context)
        if not attacks(int(context.node_config.get("partition-id", -1))) or reply.has_error():
            return reply
        if UPDATE_KEY not in reply.content.array_records:
            return reply
        return attack_reply(message, reply, context, settings)

    @wrapped.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return app(message, context)

    return wrapped


def attack_reply(
    message: Message, reply: Message, context: Context, settings: AttackSettings
) -> Message:
    """Replace the encoded update in ``reply`` by the attack ``settings`` describes."""
    task = TrainTask.from_config_record(message.content.config_records[CONFIG_KEY])
    payload = payload_bytes(reply.content.array_records[UPDATE_KEY][PAYLOAD])
    if settings.kind is AttackKind.DENSE:
        return dense_reply(message, reply, payload, settings.scale)
    if settings.kind is AttackKind.STALE:
        payload = _replayed(context, payload)
    else:
        # Each attacker draws its own noise: a shared draw would be a coordinated attack.
        device = int(context.node_config.get("partition-id", 0))
        payload = corrupt_payload(payload, task, settings, seed=(task.seed, task.round_num, device))
    records = dict(reply.content.items())
    records[UPDATE_KEY] = ArrayRecord({PAYLOAD: Array(np.frombuffer(payload, np.uint8))})
    return Message(RecordDict(records), reply_to=message)


def dense_reply(message: Message, reply: Message, payload: bytes, scale: float) -> Message:
    """``reply`` in plain Flower form: the global model plus ``scale`` times the honest delta,
    as dense float32 weights under ``arrays``, claiming :data:`DENSE_NUM_EXAMPLES` examples."""
    update = honest_update(payload)
    model = payload_bytes(message.content.array_records[MODEL_KEY][PAYLOAD])
    shapes = {name: value.shape for name, value in update.tensors.items()}
    base = decode_model(model, expected_shapes=shapes).tensors
    weights = {
        name: np.asarray(base[name] + scale * delta, np.float32)
        for name, delta in update.tensors.items()
    }
    records = {key: value for key, value in reply.content.items() if key != UPDATE_KEY}
    metrics = MetricRecord(dict(reply.content.metric_records[METRICS_KEY]))
    metrics[NUM_EXAMPLES] = DENSE_NUM_EXAMPLES
    records[METRICS_KEY] = metrics
    records[DENSE_KEY] = ArrayRecord({name: Array(value) for name, value in weights.items()})
    return Message(RecordDict(records), reply_to=message)


def honest_update(payload: bytes) -> DecodedUpdate:
    """The honest device's encoded update, decoded against the shapes it declares."""
    envelope = parse(pb.ModelUpdate, payload, max_bytes=len(payload))
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in envelope.tensors}
    return decode_update(payload, expected_shapes=shapes)


def corrupt_payload(
    payload: bytes, task: TrainTask, settings: AttackSettings, seed: tuple[int, ...]
) -> bytes:
    """Decode an honest update, apply a value attack, and encode it again."""
    update = honest_update(payload)
    rng = np.random.default_rng(np.random.SeedSequence([*seed, 0xBAD]))
    delta = update.tensors
    config = dataclasses.replace(task.uplink, error_feedback=False)
    kind, scale = settings.kind, settings.scale
    if kind is AttackKind.SIGN_FLIP:
        delta = {name: -scale * value for name, value in delta.items()}
    elif kind is AttackKind.SCALE:
        delta = {name: scale * value for name, value in delta.items()}
    elif kind is AttackKind.RANDOM:
        norm = float(np.sqrt(sum(np.square(v, dtype=np.float64).sum() for v in delta.values())))
        noise = {name: rng.standard_normal(value.shape) for name, value in delta.items()}
        noise_norm = float(np.sqrt(sum(np.square(v).sum() for v in noise.values()))) or 1.0
        delta = {name: v * (scale * norm / noise_norm) for name, v in noise.items()}
    elif kind in (AttackKind.NAN, AttackKind.INF):
        return non_finite_payload(update, np.nan if kind is AttackKind.NAN else np.inf)
    encoded = UplinkCodec(config).encode(
        {name: np.asarray(value, np.float32) for name, value in delta.items()},
        round_num=update.round_num,
        base_model_hash=update.base_model_hash,
        residual=None,
        rng=rng,
    )
    return encoded.payload


def non_finite_payload(update: DecodedUpdate, value: float) -> bytes:
    """A well-formed, checksummed dense float32 update whose every value is ``value``.

    The codec refuses to encode NaN or Inf, as an honest device should; an
    attacker writes the bytes itself, which the self-describing format allows.
    """
    encoded = UplinkCodec(UplinkCodecConfig(topk_ratio=1.0, values=ValueFormat.FP32)).encode(
        {name: np.zeros_like(tensor) for name, tensor in update.tensors.items()},
        round_num=update.round_num,
        base_model_hash=update.base_model_hash,
        residual=None,
        rng=np.random.default_rng(0),
    )
    envelope = parse(pb.ModelUpdate, encoded.payload, max_bytes=len(encoded.payload))
    for tensor in envelope.tensors:
        tensor.values = np.full(len(tensor.values) // 4, value, dtype="<f4").tobytes()
        tensor.crc32 = zlib.crc32(tensor.values, zlib.crc32(tensor.indices))
    return serialize(envelope)


def _replayed(context: Context, payload: bytes) -> bytes:
    """The first update this device sent, kept in its state and resent ever after."""
    stored = context.state.array_records.get(REPLAY_KEY)
    if stored is None:
        context.state[REPLAY_KEY] = ArrayRecord({PAYLOAD: Array(np.frombuffer(payload, np.uint8))})
        return payload
    return payload_bytes(stored[PAYLOAD])
