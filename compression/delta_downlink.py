"""The downlink as deltas: each device gets the change since the model it kept.

The server keeps a *replica*, the model every device that is up to date holds. Each round
it moves the replica toward the new global model and publishes the move. The replica lives
on a power-of-two grid per tensor (``step = 2**floor(log2(max|w| / 2**(grid_bits-1)))``,
only ever refined), so every replica value, every change and every sum of changes is exact
in float32: a device that adds the changes to its kept model rebuilds the replica bit for
bit, and the model hash checks it.

A round's move is sparse and low-bit: the residual ``global - replica`` is rounded to grid
steps, an entry moves only once it is ``move_threshold`` steps away (a dead band: an entry
that hovers around a rounding boundary does not flip every round), and at most the
``topk_ratio`` largest of each tensor move. What is not sent stays in the residual and goes
in later rounds: error feedback on the server's side, as for the devices' updates
(Sattler et al., "Robust and Communication-Efficient Federated Learning from Non-IID
Data", 2019, compress both ways; Tang et al., "DoubleSqueeze", ICML 2019, keep the
server's compression error).

A device that missed rounds gets the merged changes since the model it holds, or the whole
replica, whichever payload is smaller; a device the server knows nothing about, or that is
further behind than the ``history_rounds`` changes kept, gets the whole replica. The server's
memory is the replica, that bounded history, and which model each of at most
``tracked_devices`` devices holds: it does not grow with the fleet.

Pruned tensors: their zeros are the pruned weights (the payload names them), so a kept
weight never sits at exactly zero in the replica; where the grid would round one to zero
it moves one step away.

Examples:
    >>> from stamen.compression import decode_model
    >>> publisher = DeltaPublisher(DownlinkCodecConfig(deltas=True, topk_ratio=0.1))
    >>> w = {"w": np.random.default_rng(0).standard_normal(1000).astype(np.float32)}
    >>> first = publisher.publish(w, round_num=1)
    >>> device = decode_model(publisher.payload_for(7), expected_shapes={"w": (1000,)})
    >>> publisher.confirm(7, device.model_hash)
    >>> second = publisher.publish({"w": w["w"] * np.float32(1.01)}, round_num=2)
    >>> payload = publisher.payload_for(7)
    >>> len(payload) < len(publisher.payload_for(8)) / 4  # the delta beats the whole model
    True
    >>> rebuilt = decode_model(payload, expected_shapes={"w": (1000,)}, base=device)
    >>> rebuilt.model_hash == second.model_hash, rebuilt.was_delta
    (True, True)
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stamen.compression.codec_stages import NonZero, SignedLevels, Zlib
from stamen.compression.codecs import CodecPipeline
from stamen.compression.downlink import DecodedModel, DownlinkCodecConfig
from stamen.compression.hashing import model_hash
from stamen.compression.tensor_decode import LEVEL_BITS
from stamen.compression.wire import FLAT_NAME, FORMAT_VERSION, hash_to_bytes, serialize
from stamen.protos.update.v1 import update_pb2 as pb

_MAX_LEVEL = (1 << (LEVEL_BITS[-1] - 1)) - 1
"""Largest replica level: every level is then exact in float32 (below 2**24)."""


@dataclass(frozen=True)
class Published:
    """One round's replica: its hash and values (what every up-to-date device holds)."""

    round_num: int
    model_hash: str
    replica: dict[str, np.ndarray]
    changed: int
    """Entries that moved this round, over all tensors."""


@dataclass(frozen=True)
class _Change:
    """One round's move of the replica, sparse: positions and exact float32 amounts."""

    round_num: int
    base_hash: str
    model_hash: str
    moves: dict[str, tuple[np.ndarray, np.ndarray]]


class DeltaPublisher:
    """The server's side: the replica, its recent changes, and which model each device holds.

    Thread-safe: replies may be confirmed from a grid's thread while a round is built.
    """

    def __init__(self, config: DownlinkCodecConfig) -> None:
        self.config = config
        self.steps: dict[str, float] = {}
        self.replica: dict[str, np.ndarray] = {}
        self.pruned: tuple[str, ...] = ()
        self.round_num = 0
        self.model_hash = ""
        self.history: deque[_Change] = deque(maxlen=config.history_rounds)
        self.holders: OrderedDict[int, str] = OrderedDict()
        """Device id to the hash of the replica it holds, least recently used first."""
        self._payloads: dict[str, bytes] = {}
        self._lock = threading.Lock()

    # -- publishing ------------------------------------------------------------

    def publish(
        self,
        model: Mapping[str, np.ndarray],
        *,
        round_num: int,
        masks: Mapping[str, np.ndarray] | None = None,
    ) -> Published:
        """Move the replica toward ``model`` (already pruned by ``masks``) and publish it."""
        masks = masks or {}
        moves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        replica: dict[str, np.ndarray] = {}
        changed = 0
        for name, value in model.items():
            target = np.asarray(value, dtype=np.float32)
            held = self.replica.get(name)
            if held is None or held.shape != target.shape:
                held = np.zeros(target.shape, dtype=np.float32)
            levels = self._move(name, target, held, masks.get(name))
            positions = np.flatnonzero(levels)
            amounts = (levels.ravel()[positions] * self.steps.get(name, 0.0)).astype(np.float32)
            new = held.ravel().copy()
            new[positions] += amounts  # exact: both on the grid, levels below 2**24
            replica[name] = new.reshape(target.shape)
            moves[name] = (positions, amounts)
            changed += positions.size
        digest = model_hash(replica)
        with self._lock:
            if self.model_hash:
                self.history.append(_Change(round_num, self.model_hash, digest, moves))
            self.replica, self.model_hash, self.round_num = replica, digest, round_num
            self.pruned = tuple(name for name in model if name in masks)
            self._payloads = {}
        return Published(round_num, digest, replica, changed)

    def _move(
        self, name: str, target: np.ndarray, held: np.ndarray, mask: np.ndarray | None
    ) -> np.ndarray:
        """This round's move of one tensor, in grid steps (int64, the tensor's shape).

        A tensor's first values go whole (every device's first payload is the whole model
        anyway); later an entry moves once it is ``move_threshold`` steps away, and at most
        ``topk_ratio`` of the tensor's entries move.
        """
        first = self.steps.get(name, 0.0) == 0.0
        step = self._step(name, target)
        if step == 0.0:
            return np.zeros(target.shape, dtype=np.int64)
        residual = (target.astype(np.float64) - held) / step
        levels = np.rint(residual).astype(np.int64)
        if not first:
            levels[np.abs(residual) < self.config.move_threshold] = 0
        moving = np.flatnonzero(levels)
        cap = max(1, math.ceil(self.config.topk_ratio * target.size - 1e-9))
        if moving.size > cap and not first:
            order = np.argpartition(-np.abs(residual.ravel()[moving]), cap - 1)
            flat = levels.ravel()
            flat[moving[order[cap:]]] = 0
        held_levels = np.rint(held.astype(np.float64) / step).astype(np.int64)
        if mask is not None:
            # Pruned weights go to exactly zero now, whatever the top-k says ...
            levels = np.where(mask, levels, -held_levels)
            # ... and kept ones never sit at zero, or the device would take them as pruned.
            stuck = mask & (held_levels + levels == 0)
            away = np.where(target >= 0, 1, -1)
            levels = np.where(stuck, away - held_levels, levels)
        # Every level stays below 2**23, so every replica value is exact in float32.
        return np.clip(held_levels + levels, -_MAX_LEVEL, _MAX_LEVEL) - held_levels

    def _step(self, name: str, target: np.ndarray) -> float:
        """The tensor's grid step: set by its first non-zero values, refined as they shrink."""
        current = self.steps.get(name, 0.0)
        peak = float(np.max(np.abs(target))) if target.size else 0.0
        if peak == 0.0 or not math.isfinite(peak):
            return current
        wanted = 2.0 ** math.floor(math.log2(peak / (1 << (self.config.grid_bits - 1))))
        if current == 0.0 or wanted < current:  # a finer grid keeps every value exact
            self.steps[name] = current = wanted
        return current

    # -- what each device gets -------------------------------------------------

    def payload_for(self, node_id: int) -> bytes:
        """The payload for ``node_id``: a delta to the model it holds, or the whole replica."""
        with self._lock:
            held = self.holders.get(node_id)
            if held is not None:
                self.holders.move_to_end(node_id)
        return self.payload_from(held)

    def payload_from(self, held: str | None) -> bytes:
        """The smaller of the whole replica and the delta from ``held`` (if it is known)."""
        key = held or ""
        cached = self._payloads.get(key)
        if cached is not None:
            return cached
        whole = self._payloads.get("") or self._encode(self.replica, base_hash=None)
        self._payloads[""] = whole
        payload = whole
        moves = self._moves_since(held) if held else None
        if moves is not None:
            delta = self._encode(moves, base_hash=held)
            if len(delta) < len(whole):
                payload = delta
        self._payloads[key] = payload
        return payload

    def _moves_since(self, held: str) -> dict[str, np.ndarray] | None:
        """The replica minus the one with hash ``held``, or None if that is not in the history."""
        changes = list(self.history)
        start = next((i for i, c in enumerate(changes) if c.base_hash == held), None)
        if held == self.model_hash:
            start = len(changes)
        if start is None:
            return None
        total = {name: np.zeros(value.size, np.float64) for name, value in self.replica.items()}
        for change in changes[start:]:
            for name, (positions, amounts) in change.moves.items():
                if name in total and positions.size and positions[-1] < total[name].size:
                    np.add.at(total[name], positions, amounts)
        moves = {}
        for name, value in self.replica.items():
            step = self.steps.get(name, 0.0)
            if step and np.max(np.abs(total[name]), initial=0.0) / step > _MAX_LEVEL:
                return None
            moves[name] = total[name].astype(np.float32).reshape(value.shape)
        return moves

    def _encode(self, tensors: Mapping[str, np.ndarray], *, base_hash: str | None) -> bytes:
        return flat_payload(
            tensors,
            self.steps,
            round_num=self.round_num,
            model_hash=self.model_hash,
            base_hash=base_hash,
            pruned=self.pruned,
        )

    # -- which model each device holds ------------------------------------------

    def confirm(self, node_id: int, held_hash: str) -> None:
        """``node_id`` showed (by a valid update against it) that it holds ``held_hash``."""
        if self.config.tracked_devices == 0:
            return
        with self._lock:
            self.holders[node_id] = held_hash
            self.holders.move_to_end(node_id)
            while len(self.holders) > self.config.tracked_devices:
                self.holders.popitem(last=False)

    def forget(self, node_id: int) -> None:
        """Send ``node_id`` the whole model next time (it failed, or refused a delta)."""
        with self._lock:
            self.holders.pop(node_id, None)

    # -- checkpoints ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The replica, its grid, the history and the holders: JSON values and arrays."""
        with self._lock:
            return {
                "steps": dict(self.steps),
                "replica": dict(self.replica),
                "pruned": list(self.pruned),
                "round": self.round_num,
                "hash": self.model_hash,
                "history": [
                    {
                        "round": change.round_num,
                        "base": change.base_hash,
                        "hash": change.model_hash,
                        "positions": {k: v[0] for k, v in change.moves.items()},
                        "amounts": {k: v[1] for k, v in change.moves.items()},
                    }
                    for change in self.history
                ],
                "holders": [[node, held] for node, held in self.holders.items()],
            }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        with self._lock:
            self.steps = {name: float(step) for name, step in state["steps"].items()}
            self.replica = {
                name: np.asarray(value, np.float32) for name, value in state["replica"].items()
            }
            self.pruned = tuple(state["pruned"])
            self.round_num = int(state["round"])
            self.model_hash = str(state["hash"])
            self.history.clear()
            for entry in state["history"]:
                moves = {
                    name: (
                        np.asarray(entry["positions"][name], np.int64),
                        np.asarray(entry["amounts"][name], np.float32),
                    )
                    for name in entry["positions"]
                }
                self.history.append(
                    _Change(int(entry["round"]), str(entry["base"]), str(entry["hash"]), moves)
                )
            self.holders = OrderedDict((int(node), str(held)) for node, held in state["holders"])
            self._payloads = {}


def flat_payload(
    tensors: Mapping[str, np.ndarray],
    steps: Mapping[str, float],
    *,
    round_num: int,
    model_hash: str,
    base_hash: str | None = None,
    pruned: tuple[str, ...] = (),
) -> bytes:
    """A flat model payload: ``tensors`` (each on its power-of-two grid ``steps``) as one
    vector of integer levels, a delta to ``base_hash`` where given."""
    grid = [steps.get(name, 0.0) for name in tensors]
    levels = np.concatenate(
        [
            (np.asarray(value, np.float64).ravel() / step if step else np.zeros(value.size))
            for value, step in zip(tensors.values(), grid, strict=True)
        ]
    ).astype(np.float32)
    message = CodecPipeline([NonZero(), SignedLevels(1.0), Zlib()]).encode_tensor(FLAT_NAME, levels)
    envelope = pb.ModelPayload(
        format_version=FORMAT_VERSION,
        round=round_num,
        model_sha256=hash_to_bytes(model_hash),
        tensors=[message],
        base_model_sha256=hash_to_bytes(base_hash) if base_hash else b"",
        pruned=list(pruned),
        keep=True,
        flat=True,
        steps=grid,
    )
    return serialize(envelope)


def kept_model_bytes(model: DecodedModel) -> bytes:
    """A device's kept model as a whole-model payload (exact, compact), for its state.

    One tensor per model tensor, so that the payload names its own shapes (a device's agent
    reads it back before it knows its model). ValueError if the model is not on the grid its
    payload named (a server bug).
    """
    messages = [
        CodecPipeline([NonZero(), SignedLevels(model.steps.get(name, 0.0)), Zlib()]).encode_tensor(
            name, value
        )
        for name, value in model.tensors.items()
    ]
    envelope = pb.ModelPayload(
        format_version=FORMAT_VERSION,
        round=model.round_num,
        model_sha256=hash_to_bytes(model.model_hash),
        tensors=messages,
        pruned=sorted(model.masks),
        keep=True,
    )
    return serialize(envelope)
