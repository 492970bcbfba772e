"""The device's side of secure aggregation: one handler per message type.

The protocol (``stamen.contract.secure``, docs/privacy.md) is SecAgg with SecAgg+'s
neighbour graph; the maths is :mod:`stamen.privacy`. Everything the server sends is
checked before it is used: a neighbour list must be the one the public graph gives,
keys and shares must have their sizes, and an unmask request may ask, for each
neighbour, for one secret only, once, and only with enough survivors. The round's
secrets stay in the device's ``Context.state``; a refused request is an ``Error``
reply with the reason, and the device keeps no secret it did not mean to share.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from stamen.client.residual import load_residual, store_residual
from stamen.contract import METRICS_KEY, NUM_EXAMPLES, PAYLOAD, UPDATE_KEY
from stamen.contract.secure import SECAGG_KEY, SECAGG_STATE_KEY, UploadParams
from stamen.privacy import (
    SEALED_SHARE_BYTES,
    SHARE_BYTES,
    DeviceSecrets,
    RoundScale,
    SecureAggregationError,
    coordinates_from_bitmap,
    eligible_mask,
    gather,
    graph_seed,
    mask,
    neighbour_graph,
    open_share,
    pack_residues,
    quantize,
    round_coordinates,
    scatter,
    seal_share,
    share_secrets,
    skellam_noise,
    to_residues,
)
from stamen.transport import model_delta

if TYPE_CHECKING:
    from stamen.client.app import Trained, TrainJob

LOG = logging.getLogger("stamen.client")

REFUSED = 3
"""Error code of a secure-aggregation request the device refuses."""


def refuse(message: Message, reason: str) -> Message:
    """The ``Error`` reply to a request the device will not serve."""
    return Message(Error(code=REFUSED, reason=f"secure aggregation: {reason}"), reply_to=message)


def _record(message: Message) -> ConfigRecord:
    record = message.content.config_records.get(SECAGG_KEY)
    if record is None:
        raise SecureAggregationError("the message has no secure-aggregation record")
    return record


def _state(context: Context, round_num: int) -> ConfigRecord:
    state = context.state.config_records.get(SECAGG_STATE_KEY)
    if state is None or state.get("round") != round_num:
        raise SecureAggregationError(f"no keys were made for round {round_num}")
    return state


def _ints(record: ConfigRecord, key: str) -> list[int]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise SecureAggregationError(f"{key} must be a list of node ids")
    return [int(v) for v in value]


def _blobs(record: ConfigRecord, key: str, count: int, size: int) -> list[bytes]:
    value = record.get(key, [])
    if not isinstance(value, list) or len(value) != count:
        raise SecureAggregationError(f"{key} must hold {count} entries")
    if not all(isinstance(v, bytes) and len(v) == size for v in value):
        raise SecureAggregationError(f"each of {key} must be {size} bytes")
    return [bytes(v) for v in value if isinstance(v, bytes)]


def handle_advertise(message: Message, context: Context) -> Message:
    """Make this round's keys; answer with their public halves and the seed's commitment."""
    try:
        round_num = int(_record(message)["round"])  # type: ignore[arg-type]
    except (SecureAggregationError, KeyError, TypeError, ValueError) as error:
        return refuse(message, f"malformed request: {error}")
    node_id = message.metadata.dst_node_id
    secrets = DeviceSecrets.generate()
    context.state[SECAGG_STATE_KEY] = ConfigRecord(
        {"round": round_num, "secrets": secrets.to_bytes()}
    )
    public = secrets.public(node_id, round_num)
    reply = ConfigRecord(
        {
            "cipher-public": public.cipher_public,
            "mask-public": public.mask_public,
            "seed-commitment": public.seed_commitment,
        }
    )
    return Message(RecordDict({SECAGG_KEY: reply}), reply_to=message)


def handle_share(message: Message, context: Context) -> Message:
    """Check the neighbours against the public graph; answer with sealed Shamir shares."""
    node_id = message.metadata.dst_node_id
    try:
        record = _record(message)
        round_num = int(record["round"])  # type: ignore[arg-type]
        state = _state(context, round_num)
        nodes = _ints(record, "nodes")
        degree, threshold = int(record["degree"]), int(record["threshold"])  # type: ignore[arg-type]
        run_seed = int(record["run-seed"])  # type: ignore[arg-type]
        if node_id not in nodes or len(set(nodes)) != len(nodes):
            raise SecureAggregationError("this device is not in the round's node list")
        if not 0 < degree < len(nodes) or not (degree + 1) / 2 < threshold <= degree + 1:
            raise SecureAggregationError("the threshold must be a majority of each neighbourhood")
        graph = neighbour_graph(nodes, degree=degree, seed=graph_seed(round_num, run_seed, nodes))
        neighbours = _ints(record, "neighbours")
        if tuple(neighbours) != graph[node_id]:
            raise SecureAggregationError("the neighbours named are not this device's in the graph")
        cipher_publics = _blobs(record, "cipher-publics", len(neighbours), 32)
        mask_publics = _blobs(record, "mask-publics", len(neighbours), 32)
        secrets = DeviceSecrets.from_bytes(state["secrets"])  # type: ignore[arg-type]
        shares = share_secrets(secrets, [*neighbours, node_id], threshold)
        sealed = [
            seal_share(
                secrets.cipher_key,
                public,
                round_num=round_num,
                src=node_id,
                dst=other,
                shares=shares[other],
            )
            for other, public in zip(neighbours, cipher_publics, strict=True)
        ]
    except (SecureAggregationError, KeyError, TypeError, ValueError) as error:
        return refuse(message, str(error))
    state["neighbours"] = neighbours
    state["cipher-publics"] = cipher_publics
    state["mask-publics"] = mask_publics
    state["threshold"] = threshold
    state["own-shares"] = shares[node_id]
    reply = ConfigRecord({"to": neighbours, "sealed": sealed})
    return Message(RecordDict({SECAGG_KEY: reply}), reply_to=message)


def secure_upload(job: TrainJob, trained: Trained) -> Message:
    """After training: open the shares sealed for this device, then quantize, noise and mask
    the update at the round's coordinates, keeping what is left out in the residual."""
    message, context, node_id = job.message, job.context, job.message.metadata.dst_node_id
    try:
        record = _record(message)
        params = UploadParams.from_config_record(record)
        state = _state(context, params.round_num)
        neighbours = [int(v) for v in state["neighbours"]]  # type: ignore[union-attr]
        senders = _ints(record, "senders")
        if not set(senders) <= set(neighbours):
            raise SecureAggregationError(
                "shares were forwarded from devices that are not neighbours"
            )
        sealed = _blobs(record, "sealed", len(senders), SEALED_SHARE_BYTES)
        secrets = DeviceSecrets.from_bytes(state["secrets"])  # type: ignore[arg-type]
    except (SecureAggregationError, KeyError, TypeError, ValueError) as error:
        return refuse(message, str(error))
    position = {other: i for i, other in enumerate(neighbours)}
    cipher_publics: list[bytes] = state["cipher-publics"]  # type: ignore[assignment]
    mask_publics: list[bytes] = state["mask-publics"]  # type: ignore[assignment]
    held_from, held = [], []
    for sender, box in zip(senders, sealed, strict=True):
        try:  # a share that does not open is not held; the others still rebuild the secret
            pair = open_share(
                secrets.cipher_key,
                cipher_publics[position[sender]],
                round_num=params.round_num,
                src=sender,
                dst=node_id,
                sealed=box,
            )
        except SecureAggregationError:
            continue
        held_from.append(sender)
        held.append(pair[0] + pair[1])
    try:
        residues, sent_examples = _masked_update(
            job, trained, params, secrets, node_id, senders, mask_publics, position
        )
    except ValueError as error:  # the server's coordinate bitmap does not fit this model
        return refuse(message, str(error))
    state["senders"] = senders
    state["held-from"] = held_from
    state["held"] = held
    state["uploaded"] = True
    content = RecordDict(
        {
            UPDATE_KEY: ArrayRecord(
                {PAYLOAD: Array(np.frombuffer(pack_residues(residues, params.bits), np.uint8))}
            ),
            METRICS_KEY: MetricRecord({NUM_EXAMPLES: sent_examples}),
        }
    )
    return Message(content, reply_to=message)


def _masked_update(
    job: TrainJob,
    trained: Trained,
    params: UploadParams,
    secrets: DeviceSecrets,
    node_id: int,
    senders: list[int],
    mask_publics: list[bytes],
    position: dict[int, int],
) -> tuple[np.ndarray, int]:
    decoded, context = job.decoded, job.context
    delta = model_delta(trained.state, decoded.tensors)
    residual = (
        load_residual(context, delta, decoded.masks) if job.task.uplink.error_feedback else None
    )
    corrected = {k: v + residual[k] if residual is not None else v for k, v in delta.items()}
    if not all(np.isfinite(value).all() for value in corrected.values()):
        # Training diverged (a noisy global model can do that): this device adds nothing to
        # the sum this round and starts its error feedback afresh, so the sum stays finite.
        LOG.warning("round %d: the local update is not finite; sending zeros", params.round_num)
        corrected = {name: np.zeros_like(value) for name, value in corrected.items()}
    shapes = {name: tuple(value.shape) for name, value in corrected.items()}
    if params.coordinates:  # announced by the server: checked against the pruning masks
        eligible = eligible_mask(shapes, decoded.masks)
        coordinates = coordinates_from_bitmap(params.coordinates, eligible.size, eligible)
    else:
        coordinates = round_coordinates(
            shapes,
            decoded.masks,
            ratio=params.ratio,
            seed=params.run_seed,
            round_num=params.round_num,
        )
    scale = RoundScale(
        step=params.step,
        coordinate_bound=params.coordinate_bound,
        clip=params.clip or None,
        norm_bound=params.norm_bound,
    )
    rng = np.random.default_rng()
    quantized = quantize(gather(corrected, coordinates), scale, rng)
    if job.task.uplink.error_feedback:
        sent = scatter(quantized.sent, coordinates, shapes)
        store_residual(context, {k: (v - sent[k]).astype(np.float32) for k, v in corrected.items()})
    integers = quantized.integers + skellam_noise(
        rng, variance=params.noise_variance, size=coordinates.size
    )
    masked = mask(
        to_residues(integers, params.bits),
        secrets,
        node_id=node_id,
        round_num=params.round_num,
        bits=params.bits,
        neighbours={other: mask_publics[position[other]] for other in senders},
    )
    return masked, int(trained.result.num_examples)


def handle_unmask(message: Message, context: Context) -> Message:
    """Answer, for each neighbour, with exactly one share: its seed if it uploaded, its mask
    key if it did not; once per round, and only if enough of the neighbourhood survived."""
    node_id = message.metadata.dst_node_id
    try:
        record = _record(message)
        round_num = int(record["round"])  # type: ignore[arg-type]
        state = _state(context, round_num)
        if not state.get("uploaded"):
            raise SecureAggregationError("this device did not upload this round")
        if state.get("unmasked"):
            raise SecureAggregationError("the masks of this round were already answered for")
        survivors, dropped = _ints(record, "survivors"), _ints(record, "dropped")
        senders = {int(v) for v in state["senders"]}  # type: ignore[union-attr]
        if set(survivors) & set(dropped) or node_id not in survivors:
            raise SecureAggregationError("a device cannot both survive and drop out")
        if not (set(survivors) | set(dropped)) <= senders | {node_id}:
            raise SecureAggregationError(
                "asked about devices that are not its neighbours this round"
            )
        threshold = int(state["threshold"])  # type: ignore[arg-type]
        if len(survivors) < threshold:
            raise SecureAggregationError(
                f"only {len(survivors)} survivors; at least {threshold} needed"
            )
    except (SecureAggregationError, KeyError, TypeError, ValueError) as error:
        return refuse(message, str(error))
    pairs = [v for v in state["held"] if isinstance(v, bytes)]  # type: ignore[union-attr]
    held = dict(zip(_ints(state, "held-from"), pairs, strict=True))
    own = state["own-shares"]
    held[node_id] = own if isinstance(own, bytes) else b""
    seed_owners = [v for v in survivors if v in held]
    key_owners = [v for v in dropped if v in held]
    state["unmasked"] = True
    reply = ConfigRecord(
        {
            "seed-owners": seed_owners,
            "seed-shares": [held[v][:SHARE_BYTES] for v in seed_owners],
            "key-owners": key_owners,
            "key-shares": [held[v][SHARE_BYTES:] for v in key_owners],
        }
    )
    return Message(RecordDict({SECAGG_KEY: reply}), reply_to=message)
