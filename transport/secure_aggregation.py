"""The server's side of one secure-aggregation round: four exchanges, every reply checked.

The protocol is SecAgg (Bonawitz et al. 2017) with SecAgg+'s neighbour graph (Bell et al.
2020); the device's side is ``stamen.client.secure_aggregation`` and the maths
:mod:`stamen.privacy`. :class:`SecureRound` builds each exchange's messages and takes
its replies; a reply that is malformed, late, from a device not asked, or that does not
verify is refused with a reason and its device counts as dropped from then on. What
the server finally learns is the modular sum of the uploads of the devices that
survived, and it learns it only if at least ``min_survivors`` did.

Secrets rebuilt from shares are checked against what their owner published (a mask
key against its public key, a seed against its commitment), so a device that sends
a wrong share cannot make the server remove a wrong mask: the server tries other
sets of shares, and fails the round (model unchanged) only if none verifies.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from stamen.contract import PAYLOAD, UPDATE_KEY, payload_bytes
from stamen.contract.secure import ADVERTISE, SECAGG_KEY, SHARE, UNMASK, UploadParams
from stamen.core.errors import InvalidUpdate
from stamen.privacy import (
    SEALED_SHARE_BYTES,
    AdvertisedKeys,
    SecureAggregationError,
    add_residues,
    check_share,
    graph_degree,
    graph_seed,
    neighbour_graph,
    public_of,
    rebuild,
    remove_masks,
    seed_commitment,
    shamir_threshold,
    unpack_residues,
)

MAX_REBUILD_TRIES = 64
"""Share subsets tried per secret before giving up on it (bounded work per liar)."""


class RoundFailed(Exception):
    """The round cannot be unmasked; the message says why."""


@dataclass
class SecureRound:
    """One round's protocol state on the server.

    Args:
        round_num: the round.
        run_seed: public seed of the graph and coordinates.
        threshold_fraction: Shamir threshold as a fraction of each neighbourhood (> 1/2).
        dropout_tolerance: the dropout the graph's degree is sized for.
        min_survivors: uploads needed to unmask at all.
    """

    round_num: int
    run_seed: int
    threshold_fraction: float
    dropout_tolerance: float
    min_survivors: int
    keys: dict[int, AdvertisedKeys] = field(default_factory=dict)
    graph: dict[int, tuple[int, ...]] = field(default_factory=dict)
    degree: int = 0
    threshold: int = 0
    sealed: dict[int, dict[int, bytes]] = field(default_factory=dict)
    """``sealed[dst][src]``: the shares ``src`` sealed for ``dst``."""
    uploads: dict[int, np.ndarray] = field(default_factory=dict)
    shares: dict[str, dict[int, list[bytes]]] = field(
        default_factory=lambda: {"seed": {}, "key": {}}
    )
    rejections: list[tuple[int, str]] = field(default_factory=list)

    # -- 1. advertise keys -----------------------------------------------------------

    def advertise_messages(self, node_ids: Iterable[int]) -> list[Message]:
        """Ask each sampled device for this round's public keys."""
        return [self._message(node, ADVERTISE, {"round": self.round_num}) for node in node_ids]

    def take_advertised(self, replies: Iterable[Message], sampled: set[int]) -> None:
        """Keep each well-formed set of keys; then draw the round's graph over those devices."""
        for node, record in self._records(replies, expected=sampled):
            try:
                self.keys[node] = AdvertisedKeys(
                    cipher_public=record["cipher-public"],  # type: ignore[arg-type]
                    mask_public=record["mask-public"],  # type: ignore[arg-type]
                    seed_commitment=record["seed-commitment"],  # type: ignore[arg-type]
                )
            except (KeyError, SecureAggregationError) as error:
                self.reject(node, f"keys refused: {error}")
        publics = [k.mask_public for k in self.keys.values()] + [
            k.cipher_public for k in self.keys.values()
        ]
        if len(set(publics)) != len(publics):  # a device replaying another's key
            duplicated = {p for p in publics if publics.count(p) > 1}
            for node in [
                n for n, k in self.keys.items() if {k.mask_public, k.cipher_public} & duplicated
            ]:
                self.reject(node, "keys refused: a public key another device also sent")
                del self.keys[node]
        nodes = sorted(self.keys)
        self.degree = graph_degree(
            len(nodes), threshold_fraction=self.threshold_fraction, dropout=self.dropout_tolerance
        )
        self.threshold = shamir_threshold(self.degree, self.threshold_fraction)
        self.graph = neighbour_graph(
            nodes, degree=self.degree, seed=graph_seed(self.round_num, self.run_seed, nodes)
        )

    # -- 2. share keys ---------------------------------------------------------------

    def share_messages(self) -> list[Message]:
        """Send each device its neighbours' keys and the graph's public parameters."""
        nodes = sorted(self.keys)
        messages = []
        for node in nodes:
            neighbours = list(self.graph[node])
            messages.append(
                self._message(
                    node,
                    SHARE,
                    {
                        "round": self.round_num,
                        "nodes": nodes,
                        "degree": self.degree,
                        "threshold": self.threshold,
                        "run-seed": self.run_seed,
                        "neighbours": neighbours,
                        "cipher-publics": [self.keys[v].cipher_public for v in neighbours],
                        "mask-publics": [self.keys[v].mask_public for v in neighbours],
                    },
                )
            )
        return messages

    def take_shares(self, replies: Iterable[Message]) -> None:
        """Keep each device's sealed shares if it sealed exactly one for every neighbour."""
        for node, record in self._records(replies, expected=set(self.keys)):
            to, sealed = record.get("to"), record.get("sealed")
            if (
                to != list(self.graph[node])
                or not isinstance(sealed, list)
                or len(sealed) != len(to)
            ):
                self.reject(node, "shares refused: not one sealed share per neighbour")
                continue
            if not all(isinstance(box, bytes) and len(box) == SEALED_SHARE_BYTES for box in sealed):
                self.reject(
                    node, f"shares refused: a sealed share is not {SEALED_SHARE_BYTES} bytes"
                )
                continue
            for dst, box in zip(cast(list[int], to), cast(list[bytes], sealed), strict=True):
                self.sealed.setdefault(dst, {})[node] = box
        shared = self.shared()
        for dst in list(self.sealed):
            self.sealed[dst] = {src: box for src, box in self.sealed[dst].items() if src in shared}

    def shared(self) -> set[int]:
        """The devices whose shares every neighbour was sent (U2)."""
        return {src for boxes in self.sealed.values() for src in boxes}

    # -- 3. masked upload ------------------------------------------------------------

    def upload_record(self, node: int, params: UploadParams) -> ConfigRecord:
        """The public parameters and the shares sealed for ``node`` by its neighbours in U2."""
        record = params.to_config_record()
        boxes = self.sealed.get(node, {})
        senders = [src for src in self.graph[node] if src in boxes]
        record["senders"] = senders
        record["sealed"] = [boxes[src] for src in senders]
        return record

    def take_uploads(self, replies: Iterable[Message], count: int, bits: int) -> None:
        """Keep each masked vector of exactly ``count`` residues at ``bits`` bits."""
        expected = self.shared()
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in expected or node in self.uploads:
                self.reject(node, "upload refused: not expected from this device")
                continue
            if reply.has_error():
                self.reject(node, f"upload failed on the device: {reply.error.reason}")
                continue
            try:
                array = reply.content.array_records[UPDATE_KEY][PAYLOAD]
                self.uploads[node] = unpack_residues(payload_bytes(array), count, bits)
            except (KeyError, TypeError, InvalidUpdate) as error:
                self.reject(node, f"upload refused: {error}")

    # -- 4. unmask -------------------------------------------------------------------

    def unmask_messages(self) -> list[Message]:
        """Ask each uploader, for its neighbours in U2, one share each (seed or key)."""
        survivors, shared = set(self.uploads), self.shared()
        if len(survivors) < self.min_survivors:
            raise RoundFailed(
                f"only {len(survivors)} uploads; at least {self.min_survivors} needed"
            )
        messages = []
        for node in sorted(survivors):
            around = [v for v in self.graph[node] if v in shared]
            messages.append(
                self._message(
                    node,
                    UNMASK,
                    {
                        "round": self.round_num,
                        "survivors": sorted([node, *(v for v in around if v in survivors)]),
                        "dropped": [v for v in around if v not in survivors],
                    },
                )
            )
        return messages

    def take_unmask(self, replies: Iterable[Message]) -> None:
        """Collect well-formed shares, each at the index its holder was given."""
        for node, record in self._records(replies, expected=set(self.uploads)):
            for kind in ("seed", "key"):
                owners, shares = record.get(f"{kind}-owners"), record.get(f"{kind}-shares")
                if (
                    not isinstance(owners, list)
                    or not isinstance(shares, list)
                    or len(owners) != len(shares)
                ):
                    self.reject(node, f"unmask refused: malformed {kind} shares")
                    break
                for owner, share in zip(owners, shares, strict=True):
                    if not isinstance(owner, int) or not isinstance(share, bytes):
                        self.reject(node, f"unmask: a malformed {kind} share")
                        continue
                    holders = (
                        sorted((*self.graph.get(owner, ()), owner)) if owner in self.graph else []
                    )
                    if node not in holders:
                        continue
                    try:
                        check_share(share, holders.index(node) + 1)
                    except SecureAggregationError as error:
                        self.reject(node, f"unmask: a share refused: {error}")
                        continue
                    self.shares[kind].setdefault(owner, []).append(share)

    def unmasked_sum(self, bits: int) -> np.ndarray:
        """The modular sum of the survivors' plain vectors (:class:`RoundFailed` if none)."""
        survivors, shared = sorted(self.uploads), self.shared()
        dropped = sorted(shared - set(survivors))
        seeds = [self._rebuild("seed", node) for node in survivors]
        keys = {node: self._rebuild("key", node) for node in dropped}
        total = np.zeros_like(next(iter(self.uploads.values())))
        for node in survivors:
            total = add_residues(total, self.uploads[node], bits)
        return remove_masks(
            total,
            bits=bits,
            round_num=self.round_num,
            self_seeds=seeds,
            dropped_keys=keys,
            survivors_of={
                d: {v: self.keys[v].mask_public for v in self.graph[d] if v in self.uploads}
                for d in dropped
            },
        )

    def _rebuild(self, kind: str, owner: int) -> bytes:
        shares = self.shares[kind].get(owner, [])
        if len(shares) < self.threshold:
            raise RoundFailed(
                f"{len(shares)} {kind} shares of node {owner}; {self.threshold} needed"
            )
        # The first shares, then random subsets: a liar among them is left out of some soon.
        rng = np.random.default_rng([self.round_num, owner])
        subsets: Iterable[Any] = itertools.chain(
            [list(range(self.threshold))],
            (
                rng.choice(len(shares), self.threshold, replace=False)
                for _ in range(MAX_REBUILD_TRIES)
            ),
        )
        for subset in subsets:
            secret = rebuild([shares[int(i)] for i in subset])
            if secret is not None and self._verifies(kind, owner, secret):
                return secret
        raise RoundFailed(f"no set of node {owner}'s {kind} shares rebuilds its published secret")

    def _verifies(self, kind: str, owner: int, secret: bytes) -> bool:
        published = self.keys[owner]
        if kind == "seed":
            return seed_commitment(secret, owner, self.round_num) == published.seed_commitment
        return public_of(secret) == published.mask_public

    # -- helpers ---------------------------------------------------------------------

    def reject(self, node: int, reason: str) -> None:
        """Note a refused message (the strategy records it in the round's stats)."""
        self.rejections.append((node, reason))

    def _message(self, node: int, message_type: str, fields: dict[str, object]) -> Message:
        return Message(
            content=RecordDict({SECAGG_KEY: ConfigRecord(fields)}),  # type: ignore[arg-type]
            dst_node_id=node,
            message_type=message_type,
            group_id=str(self.round_num),
        )

    def _records(
        self, replies: Iterable[Message], expected: set[int] | None
    ) -> list[tuple[int, ConfigRecord]]:
        seen: set[int] = set()
        records = []
        for reply in sorted(replies, key=lambda r: r.metadata.src_node_id):
            node = reply.metadata.src_node_id
            if (expected is not None and node not in expected) or node in seen:
                self.reject(node, "reply refused: not expected from this device")
                continue
            seen.add(node)
            if reply.has_error():
                self.reject(node, f"the device refused or failed: {reply.error.reason}")
                continue
            record = reply.content.config_records.get(SECAGG_KEY)
            if record is None:
                self.reject(node, "reply refused: no secure-aggregation record")
                continue
            records.append((node, record))
        return records


def min_survivors(devices: int, threshold_fraction: float) -> int:
    """The fewest uploads a round of ``devices`` unmasks (never fewer than two)."""
    return max(2, math.ceil(threshold_fraction * devices))
