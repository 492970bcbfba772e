"""Secure aggregation end to end on the in-process grid: real ClientApp, real keys, real shares.

The server's unmasked sum is compared with the plain sum of what the surviving devices
quantized (read off their own call to ``to_residues``), with and without dropouts; one
masked upload is tested for uniformity; hostile replies are refused with reasons.
"""

from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from scipy import stats as scipy_stats

import stamen.client.secure_aggregation as device_side
import stamen.transport.secure_aggregation as server_side
from stamen.client import client_app
from stamen.client.local_data import FleetData
from stamen.config import load_config
from stamen.contract.secure import SECAGG_KEY, SHARE, UPLOAD
from stamen.privacy import centred
from stamen.server import CollectingReporter, server_app
from stamen.simulations import LocalGrid

DEVICES = 10


def private_config(**overrides: object):  # type: ignore[no-untyped-def]
    base: dict[str, object] = {
        "preset": "private-edge",
        "dataset": "digits",
        "num-devices": DEVICES,
        "devices-per-round": DEVICES,
        "rounds": 1,
        "partition": "iid",
        "model": "mlp",
        "lr": 0.1,
        "local-epochs": 1,
        "data.samples_per_device": 20,
        "federation.eval_every": 100,
    }
    base.update(overrides)
    return load_config(overrides=base)


class DroppingGrid(LocalGrid):
    """Devices in ``drop`` vanish at the masked upload: after they shared their keys."""

    def __init__(self, config, drop: set[int], tamper=None) -> None:  # type: ignore[no-untyped-def]
        fleet = FleetData(config.data, num_devices=config.federation.num_devices, seed=0)
        super().__init__(client_app(fleet), num_nodes=config.federation.num_devices)
        self.drop, self.tamper = drop, tamper

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        batch = list(messages)
        if batch and batch[0].metadata.message_type == UPLOAD:
            batch = [m for m in batch if m.metadata.dst_node_id not in self.drop]
        replies = list(super().send_and_receive(batch, timeout=timeout))
        return [self.tamper(r) for r in replies] if self.tamper else replies


def run_round(grid: LocalGrid, config, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """One round: each device's quantized integers, the server's unmasked sums, the record."""
    quantized: dict[int, np.ndarray] = {}
    sums: list[np.ndarray] = []
    to_residues, unmasked_sum = device_side.to_residues, server_side.SecureRound.unmasked_sum

    def spy_residues(integers: np.ndarray, bits: int) -> np.ndarray:
        quantized[len(quantized)] = np.array(integers)
        return to_residues(integers, bits)

    def spy_sum(self, bits):  # type: ignore[no-untyped-def]
        total = unmasked_sum(self, bits)
        sums.append(centred(total, bits))
        return total

    monkeypatch.setattr(device_side, "to_residues", spy_residues)
    monkeypatch.setattr(server_side.SecureRound, "unmasked_sum", spy_sum)
    reporter = CollectingReporter()
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    server_app(config, reporter)(grid, context)
    return quantized, sums, reporter.records[-1]


def test_the_unmasked_sum_is_exactly_the_sum_of_the_quantized_updates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = private_config()
    quantized, sums, record = run_round(DroppingGrid(config, drop=set()), config, monkeypatch)
    assert len(quantized) == DEVICES and len(sums) == 1
    assert np.array_equal(sums[0], sum(quantized.values()))
    assert record.extra["secagg_uploaded"] == DEVICES and record.accepted == DEVICES


def test_a_round_survives_30_percent_dropouts_after_key_sharing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = private_config()
    dropped = {2, 5, 9}  # 30% of the round, gone between sharing keys and uploading
    quantized, sums, record = run_round(DroppingGrid(config, drop=dropped), config, monkeypatch)
    assert len(quantized) == DEVICES - len(dropped)  # only the survivors quantized anything
    assert np.array_equal(sums[0], sum(quantized.values()))
    assert record.extra["secagg_shared"] == DEVICES
    assert record.extra["secagg_uploaded"] == DEVICES - len(dropped)
    assert record.extra["secagg_failed"] == 0.0


def test_too_many_dropouts_leave_the_model_unchanged_with_a_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = private_config()
    _, sums, record = run_round(DroppingGrid(config, drop={1, 2, 3, 4, 5}), config, monkeypatch)
    assert sums == [] and record.extra["secagg_failed"] == 1.0


def test_a_lying_device_is_refused_and_the_round_still_sums_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def tamper(reply: Message) -> Message:
        record = reply.content.config_records.get(SECAGG_KEY)
        if reply.metadata.src_node_id == 4 and record is not None and "sealed" in record:
            record["sealed"] = [b"\x00" * 7]  # shares of the wrong size and count
        return reply

    config = private_config()
    quantized, sums, record = run_round(
        DroppingGrid(config, drop=set(), tamper=tamper), config, monkeypatch
    )
    assert any("shares refused" in r["reason"] and r["node_id"] == 4 for r in record.rejections)
    assert len(quantized) == DEVICES - 1 and np.array_equal(sums[0], sum(quantized.values()))


def test_one_masked_upload_is_indistinguishable_from_uniform(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A device whose update is all zeros: what the server sees is only the masks.
    config = private_config(**{"privacy.modulus_bits": 8, "privacy.coordinate_ratio": 1.0})
    uploads: list[np.ndarray] = []
    take = server_side.SecureRound.take_uploads

    def spy(self, replies, count, bits):  # type: ignore[no-untyped-def]
        take(self, replies, count, bits)
        uploads.extend(self.uploads.values())

    monkeypatch.setattr(server_side.SecureRound, "take_uploads", spy)
    monkeypatch.setattr(device_side, "quantize", lambda values, scale, rng: _zeros(values))
    run_round(DroppingGrid(config, drop=set()), config, monkeypatch)
    residues = uploads[0]
    observed = np.bincount(residues, minlength=256)
    assert residues.size > 256 * 10  # enough for a chi-square over all 256 residues
    assert scipy_stats.chisquare(observed).pvalue > 1e-3
    assert not np.array_equal(uploads[0], uploads[1])


def _zeros(values: np.ndarray):  # type: ignore[no-untyped-def]
    from stamen.privacy import Quantized

    return Quantized(integers=np.zeros(values.size, np.int64), sent=np.zeros(values.size))


def test_the_device_refuses_neighbours_that_are_not_the_public_graphs() -> None:
    context = Context(run_id=1, node_id=3, node_config={}, state=RecordDict(), run_config={})
    advertise = Message(
        RecordDict({SECAGG_KEY: ConfigRecord({"round": 1})}),
        dst_node_id=3,
        message_type="query.secagg_advertise",
    )
    assert not device_side.handle_advertise(advertise, context).has_error()
    fields = {
        "round": 1,
        "nodes": [1, 2, 3, 4, 5],
        "degree": 4,
        "threshold": 3,
        "run-seed": 0,
        "neighbours": [1, 2],
        "cipher-publics": [b"\x01" * 32] * 2,
        "mask-publics": [b"\x02" * 32] * 2,
    }
    share = Message(
        RecordDict({SECAGG_KEY: ConfigRecord(fields)}), dst_node_id=3, message_type=SHARE
    )  # type: ignore[arg-type]
    reply = device_side.handle_share(share, context)
    assert reply.has_error() and "not this device's" in reply.error.reason
    fields.update(neighbours=[1, 2, 4, 5], threshold=2)  # 2 of 5 is no majority
    share = Message(
        RecordDict({SECAGG_KEY: ConfigRecord(fields)}), dst_node_id=3, message_type=SHARE
    )  # type: ignore[arg-type]
    assert "majority" in device_side.handle_share(share, context).error.reason
