"""The edge grid, servicer and agent over real gRPC with TLS on loopback, in one process.

Agents run in threads here, so these tests stay fast; the same pieces as real
processes are in ``test_edge_processes.py``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from stamen.client import FleetData, client_app
from stamen.client.agent import (
    Agent,
    AgentSettings,
    AgentStateStore,
    EdgeConnection,
    EdgeProtocolError,
    open_channel,
)
from stamen.client.agent.run_end import run_end_line
from stamen.config import StamenConfig, load_config
from stamen.contract import PAYLOAD, UPDATE_KEY, payload_bytes
from stamen.contract.edge import generate_key, load_public_key, task_signing_bytes, verify_signature
from stamen.core.fleet import PolicyGrid, RoundPolicy
from stamen.data import load_dataset
from stamen.models import build_model, exchanged_state
from stamen.protos.edge.v1 import edge_pb2
from stamen.server import CollectingReporter, server_app
from stamen.server.checkpoint import CheckpointStore
from stamen.server.edge import (
    EdgeGrid,
    EdgeServer,
    EdgeServerSettings,
    RunEnd,
    RunEndReason,
    init_certs,
)
from stamen.server.edge import grid as edge_grid_module
from stamen.server.edge.tasks_in_flight import DEVICE_LOST, TASK_EXPIRED
from stamen.server.federation import build_strategy, model_spec
from stamen.transport.deltas import to_array_record

FLEET = 4


def digits_config(**overrides: object) -> StamenConfig:
    values: dict[str, object] = {
        "dataset": "digits",
        "model": "mlp",
        "partition": "iid",
        "num-devices": FLEET,
        "devices-per-round": 2,
        "rounds": 2,
        "lr": 0.2,
        "local-epochs": 3,
        "uplink.topk_ratio": 0.1,
        "federation.deadline": 20.0,
    }
    values.update(overrides)
    return load_config(overrides=values)


@dataclass
class Fleet:
    """An edge server on 127.0.0.1 with TLS and agents in threads."""

    root: Path
    server: EdgeServer
    agents: list[Agent] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    def add_agent(self, pid: int, *, register: bool = True) -> Agent:
        store = AgentStateStore(self.root / f"agent{pid}")
        key = store.create_key()
        if register:
            self.server.registry.register(load_public_key(store.public_key_path), name=f"d{pid}")
        settings = AgentSettings(
            server=f"127.0.0.1:{self.server.port}",
            state_dir=store.directory,
            ca_cert=self.certs / "ca.pem",
            model_key=load_public_key(self.certs / "model-signing.pub"),
            node_config={"partition-id": pid, "num-partitions": FLEET},
            give_up_after=2.0,
            backoff_base=0.05,
            backoff_cap=0.2,
        )
        fleet = FleetData(digits_config().data, num_devices=FLEET, seed=0)
        agent = Agent(settings, client_app(fleet), key)
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        self.agents.append(agent)
        self.threads.append(thread)
        return agent

    def wait_connected(self, count: int) -> None:
        for _ in range(300):
            if len(list(self.server.grid.get_node_ids())) >= count:
                return
            threading.Event().wait(0.05)
        raise AssertionError(f"only {len(list(self.server.grid.get_node_ids()))} connected")

    def run(self, config: StamenConfig, store: CheckpointStore | None = None) -> CollectingReporter:
        collector = CollectingReporter()
        context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
        server_app(config, collector, checkpoints=store)(self.server.grid, context)
        return collector


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[object]:
    fleets: list[Fleet] = []
    init_certs(tmp_path / "certs", hosts=["127.0.0.1"])

    def build(**settings: object) -> Fleet:
        values: dict[str, object] = {
            "address": "127.0.0.1:0",
            "certs_dir": tmp_path / "certs",
            "registry": tmp_path / "devices.json",
        }
        values.update(settings)
        server = EdgeServer(EdgeServerSettings(**values))  # type: ignore[arg-type]
        server.start()
        fleet = Fleet(tmp_path, server)
        fleets.append(fleet)
        return fleet

    yield build
    for fleet in fleets:
        for agent in fleet.agents:
            agent.stop_event.set()
        fleet.server.stop()
        for thread in fleet.threads:
            thread.join(timeout=10)


def test_agents_train_over_tls_and_a_second_run_resumes_from_the_checkpoint(
    make_fleet: object, tmp_path: Path
) -> None:
    fleet = make_fleet()  # type: ignore[operator]
    for pid in range(FLEET):
        fleet.add_agent(pid)
    fleet.wait_connected(FLEET)
    store = CheckpointStore(tmp_path / "state")
    first = fleet.run(digits_config(), store)
    assert [r.accepted for r in first.records] == [2, 2]
    assert first.records[-1].accuracy > 0.5
    assert store.load().round == 2
    assert [s.replies for s in fleet.server.grid.history] == [2, 2]

    resumed = fleet.run(digits_config(rounds=3), store)
    assert [r.round for r in resumed.records] == [1, 2, 3]
    assert resumed.records[:2] == first.records  # restored, not re-run
    assert len(fleet.server.grid.history) == 3  # only round 3 went to the devices
    assert resumed.summary is not None and resumed.summary["rounds"] == 3
    for agent in fleet.agents:
        saved = agent.store.load()
        if saved.round:
            assert saved.model and saved.residual  # edge preset: error feedback on


def test_over_selection_keeps_the_first_replies_and_counts_the_rest(make_fleet: object) -> None:
    fleet = make_fleet()  # type: ignore[operator]
    for pid in range(FLEET):
        fleet.add_agent(pid)
    fleet.wait_connected(FLEET)
    # Two devices per round, sampled with 100% over-selection: the first two good replies count.
    collector = fleet.run(digits_config(rounds=1, **{"federation.over_selection": 1.0}))
    stats = fleet.server.grid.history[0]
    assert stats.sent == 4 and stats.over_selected == 2
    assert collector.records[0].sampled == 4 and collector.records[0].accepted == 2
    timing = fleet.server.grid.last_timing()
    assert timing is not None and timing.dispatched == 4 and timing.participants == 2
    assert timing.surplus == 2 and timing.stragglers == 0
    # The two extra devices were either beaten (their uploads then come late and
    # are dropped) or replied in the same instant (dropped as surplus).
    assert stats.timed_out == 0
    assert stats.cancelled + stats.surplus_dropped == 2
    assert stats.replies - 2 == stats.surplus_dropped
    for _ in range(200):
        if stats.late_dropped == stats.cancelled:
            break
        threading.Event().wait(0.05)
    assert stats.late_dropped == stats.cancelled


def test_an_unregistered_key_and_a_bad_signature_are_refused(make_fleet: object) -> None:
    fleet = make_fleet()  # type: ignore[operator]
    channel = open_channel(f"127.0.0.1:{fleet.server.port}", fleet.certs / "ca.pem")
    stranger = EdgeConnection(channel, generate_key())
    with pytest.raises(EdgeProtocolError) as refused:
        stranger.join()
    assert refused.value.code_name == "ERROR_CODE_UNKNOWN_DEVICE"
    assert "not registered" in str(refused.value)

    # A registered public key whose holder cannot sign for it (a stolen public key).
    victim = generate_key()
    fleet.server.registry.register(victim.public_key().public_bytes_raw(), name="victim")
    impostor = EdgeConnection(channel, generate_key())
    impostor.public_key = victim.public_key().public_bytes_raw()
    impostor.device_id = stranger_id = __import__("hashlib").sha256(impostor.public_key).hexdigest()
    with pytest.raises(EdgeProtocolError) as forged:
        impostor.join()
    assert forged.value.code_name == "ERROR_CODE_BAD_SIGNATURE", stranger_id
    assert list(fleet.server.grid.get_node_ids()) == []
    channel.close()


def test_plain_text_client_cannot_talk_to_a_tls_server(make_fleet: object) -> None:
    fleet = make_fleet()  # type: ignore[operator]
    channel = grpc.insecure_channel(f"127.0.0.1:{fleet.server.port}")
    with pytest.raises(grpc.RpcError):
        EdgeConnection(channel, generate_key()).join()
    channel.close()


def test_a_tampered_task_is_refused_and_a_sound_one_is_trained(make_fleet: object) -> None:
    fleet = make_fleet()  # type: ignore[operator]
    agent = fleet.add_agent(0)
    fleet.wait_connected(1)
    config = digits_config(**{"devices-per-round": 1})
    spec = model_spec(config, load_dataset("digits"))
    strategy = build_strategy(config, spec)
    arrays = to_array_record(exchanged_state(build_model(spec, seed=0)))
    grid = fleet.server.grid
    sound_seal = grid._seal

    def tampering_seal(message, task_id, deadline):  # type: ignore[no-untyped-def]
        task = sound_seal(message, task_id, deadline)
        content = bytearray(task.content)
        content[len(content) // 2] ^= 0x01  # one bit of the model, after signing
        task.content = bytes(content)
        return task

    grid._seal = tampering_seal  # type: ignore[method-assign]
    (reply,) = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    assert reply.has_error()
    assert "signature or hash does not verify" in reply.error.reason
    assert not (agent.store.directory / "state.npz").exists()  # nothing was loaded

    grid._seal = sound_seal  # type: ignore[method-assign]
    (reply,) = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    assert not reply.has_error()
    new_arrays, metrics = strategy.aggregate_train(1, [reply])
    assert new_arrays is not None and metrics["accepted"] == 1
    before, after = arrays.to_numpy_ndarrays(), new_arrays.to_numpy_ndarrays()
    assert any(np.any(a != b) for a, b in zip(after, before, strict=True))  # the model moved


def run_now(work: Callable[..., object], *args: object) -> None:
    """A stream's ``post`` without an event loop: the queues here are thread-safe."""
    work(*args)


class Devices:
    """Task streams as the servicer opens them, without gRPC: each node's inbox."""

    def __init__(self, grid: EdgeGrid, nodes: tuple[int, ...]) -> None:
        self.grid = grid
        self.inboxes: dict[int, queue.Queue[object]] = {n: queue.Queue() for n in nodes}
        self.links = {
            node: grid.connect(node, f"device-{node}", inbox.put, run_now)
            for node, inbox in self.inboxes.items()
        }

    def task(self, node: int) -> edge_pb2.Task:
        item = self.inboxes[node].get(timeout=5)
        assert isinstance(item, edge_pb2.Task)
        return item

    def answer(self, node: int, error: bool = False) -> None:
        task = self.task(node)
        instruction = self.grid.instruction(task.task_id, node)
        assert instruction is not None
        content = RecordDict({"m": MetricRecord({"x": 1})})
        reply = (
            Message(Error(code=11, reason="skipped"), reply_to=instruction)
            if error
            else Message(content, reply_to=instruction)
        )
        assert self.grid.deliver(task.task_id, reply)

    def answer_later(self, node: int) -> threading.Thread:
        helper = threading.Thread(target=self.answer, args=(node,))
        helper.start()
        return helper


def test_the_round_policy_closes_an_edge_round_at_its_quorum_or_its_deadline() -> None:
    key = generate_key()
    grid = EdgeGrid(key)
    assert isinstance(grid, PolicyGrid)
    devices = Devices(grid, (1, 2, 3))

    # Over-selection: four devices asked (one not connected), the first two good replies close it.
    grid.set_round_policy(RoundPolicy(quorum=2))
    helpers = [devices.answer_later(node) for node in (1, 2)]
    messages = [grid.create_message(RecordDict(), "train", node, "1") for node in (1, 2, 3, 9)]
    replies = list(grid.send_and_receive(messages))
    for helper in helpers:
        helper.join(timeout=5)
    stats = grid.history[-1]
    assert len(replies) == 2 and not any(r.has_error() for r in replies)  # no made-up reply
    assert stats.over_selected == 2 and stats.not_connected == 1 and stats.dropout_nodes == [9]
    assert stats.cancelled == 1 and stats.timed_out == 0 and stats.participants == 2
    timing = grid.last_timing()
    assert timing is not None and (timing.dispatched, timing.participants) == (4, 2)
    assert (timing.dropouts, timing.surplus) == (1, 1)

    # Deadline: a connected device that never answers is a straggler once it passes.
    devices.task(3)  # the cancelled task of the round above
    grid.set_round_policy(RoundPolicy(deadline=0.3))
    (message,) = [grid.create_message(RecordDict(), "train", 3, "2")]
    assert list(grid.send_and_receive([message], timeout=60)) == []
    task = devices.task(3)
    assert task.deadline_unix > 0  # signed into the task, so the agent knows it too
    assert verify_signature(
        key.public_key().public_bytes_raw(), task.signature, task_signing_bytes(task, 3)
    )
    stats = grid.history[-1]
    assert stats.timed_out == 1 and stats.timed_out_nodes == [3] and stats.seconds >= 0.3
    timing = grid.last_timing()
    assert timing is not None and timing.stragglers == 1 and timing.participants == 0
    grid.close()


def test_a_device_released_mid_round_is_a_dropout_and_the_round_does_not_wait_for_it() -> None:
    grid = EdgeGrid(generate_key())
    devices = Devices(grid, (1, 2, 3))
    grid.set_round_policy(RoundPolicy(deadline=60.0))
    messages = [grid.create_message(RecordDict(), "train", node, "1") for node in (1, 2, 3)]

    def meanwhile() -> None:
        devices.answer(1)
        devices.answer(2, error=True)  # a device's own error reply is an answer
        devices.task(3)
        assert grid.release(3, "revoked", "device 3 was revoked") == 1

    helper = threading.Thread(target=meanwhile)
    helper.start()
    started = time.monotonic()
    replies = list(grid.send_and_receive(messages))
    helper.join(timeout=5)
    assert time.monotonic() - started < 10  # not the 60 s deadline
    stats = grid.history[-1]
    assert len(replies) == 2 and stats.participants == 2
    assert (stats.revoked, stats.dropouts, stats.timed_out) == (1, 1, 0)
    assert stats.problems() == "round 1: 2/3 answered · revoked 1"
    timing = grid.last_timing()
    assert timing is not None and (timing.participants, timing.dropouts) == (2, 1)
    assert timing.dropout_ids == (3,) and timing.straggler_ids == ()  # the monitor names them
    assert grid.release(3, "revoked", "again") == 0  # nothing left to release


def test_an_asynchronous_pull_says_no_reply_yet_and_frees_gone_and_expired_tasks() -> None:
    grid = EdgeGrid(generate_key())
    devices = Devices(grid, (1, 2, 3))
    grid.set_round_policy(RoundPolicy(deadline=0.5))
    ids = list(
        grid.push_messages(
            [grid.create_message(RecordDict(), "train", node, "1") for node in (1, 2, 3, 9)]
        )
    )
    (absent,) = grid.pull_messages(ids)  # node 9 is not connected: answered at once
    assert absent.has_error() and absent.error.code == DEVICE_LOST
    assert list(grid.pull_messages(ids)) == []  # no reply yet from the others
    devices.answer(1)
    grid.release(2, "vanished", "node 2 is gone")
    replies = {r.metadata.src_node_id: r for r in grid.pull_messages(ids)}
    assert not replies[1].has_error() and replies[2].error.code == DEVICE_LOST
    assert "gone" in replies[2].error.reason and 3 not in replies
    time.sleep(0.6)
    (expired,) = grid.pull_messages(ids)
    assert expired.metadata.src_node_id == 3 and expired.error.code == TASK_EXPIRED
    assert list(grid.pull_messages(ids)) == []  # every task answered once


def test_the_run_ended_notice_is_signed_for_its_node_and_session() -> None:
    key = generate_key()
    grid = EdgeGrid(key)
    devices = Devices(grid, (1,))
    grid.end_run(RunEnd(RunEndReason.STOPPED, "stopped by an operator after 3 rounds"))
    end = devices.inboxes[1].get(timeout=5)
    assert end == grid.run_end
    notice = grid.run_ended_task(end, 1, "token-1")  # type: ignore[arg-type]
    public = key.public_key().public_bytes_raw()
    assert run_end_line(notice, 1, "token-1", public) == (
        "the run has ended on the server (stopped): stopped by an operator after 3 rounds"
    )
    assert run_end_line(notice, 2, "token-1", public) is None  # another node's
    assert run_end_line(notice, 1, "token-2", public) is None  # another session's


def test_run_ended_notices_go_out_in_waves_each_after_the_last_has_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(edge_grid_module, "RUN_END_WAVE", 2)
    grid = EdgeGrid(generate_key())
    devices = Devices(grid, (1, 2, 3, 4, 5))
    end = RunEnd(RunEndReason.FINISHED, "all 3 rounds done")
    ending = threading.Thread(target=grid.end_run, args=(end,), kwargs={"within": 30.0})
    ending.start()
    for wave in ((1, 2), (3, 4), (5,)):
        for node in wave:
            assert devices.inboxes[node].get(timeout=5) == end
        time.sleep(0.2)  # the next wave waits for this one's streams to close
        assert all(devices.inboxes[node].empty() for node in (1, 2, 3, 4, 5))
        for node in wave:
            grid.disconnect(devices.links[node])
    ending.join(timeout=5)
    assert not ending.is_alive()


def test_past_its_time_every_device_left_is_told_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge_grid_module, "RUN_END_WAVE", 2)
    grid = EdgeGrid(generate_key())
    devices = Devices(grid, (1, 2, 3, 4, 5))  # none of them closes its stream
    started = time.monotonic()
    grid.end_run(RunEnd(RunEndReason.FINISHED, "done"), within=0.3)
    assert time.monotonic() - started < 2.0
    assert all(inbox.get_nowait() == grid.run_end for inbox in devices.inboxes.values())


def test_a_task_a_restarted_server_sends_again_is_trained_from_the_same_residual(
    make_fleet: object,
) -> None:
    fleet = make_fleet()  # type: ignore[operator]
    fleet.add_agent(0)
    fleet.wait_connected(1)
    config = digits_config(**{"devices-per-round": 1})  # edge preset: error feedback on
    spec = model_spec(config, load_dataset("digits"))
    arrays = to_array_record(exchanged_state(build_model(spec, seed=0)))

    def train_round_1(server: EdgeServer) -> bytes:
        strategy = build_strategy(config, spec)
        grid = server.grid
        (reply,) = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(), grid))
        assert not reply.has_error(), reply.error.reason
        return payload_bytes(reply.content.array_records[UPDATE_KEY][PAYLOAD])

    first = train_round_1(fleet.server)
    again = train_round_1(fleet.server)
    # One session: a second task is new work (FedBuff hands a version out again), and the
    # residual the first one left goes into it.
    assert again != first
    fleet.server.stop()
    restarted = make_fleet(address=f"127.0.0.1:{fleet.server.port}")  # type: ignore[operator]
    restarted.wait_connected(1)
    # A new session: the server lost the last reply, so it is made again from the same start.
    assert train_round_1(restarted.server) == again
