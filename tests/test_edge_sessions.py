"""Join limits, challenge bounds, session expiry and signed uploads: the pieces, then real gRPC.

The pieces run on a fake clock. The last tests run an edge server and an agent
in this process over TLS on 127.0.0.1; the same attacks on real processes are
in ``test_edge_processes_sessions.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from flwr.app import ConfigRecord, Context, Message

from stamen.client import FleetData, client_app
from stamen.client.agent import Agent, AgentSettings, AgentStateStore, EdgeConnection, open_channel
from stamen.config import load_config
from stamen.contract.edge import (
    PROTOCOL_VERSION,
    device_id,
    edge_error_of,
    generate_key,
    load_public_key,
    public_bytes,
)
from stamen.core.errors import ConfigError
from stamen.data import load_dataset
from stamen.models import build_model, exchanged_state
from stamen.protos.edge.v1 import edge_pb2
from stamen.server.edge import EdgeServer, EdgeServerSettings, JoinLimits, RateLimit, init_certs
from stamen.server.edge.limits import JoinLimiter, RateLimited, TokenBuckets, peer_address
from stamen.server.edge.sessions import ChallengeBook, SessionTable
from stamen.server.federation import build_strategy, model_spec
from stamen.transport.deltas import to_array_record


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the limiter ----------------------------------------------------------------------


def test_a_bucket_grants_its_burst_then_its_rate_and_says_when_to_retry() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(burst=3, per_minute=30), capacity=100, clock=clock)
    assert [buckets.take("peer") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("peer") == pytest.approx(2.0)  # 30 a minute: one every 2 s
    clock.now += 2.0
    assert buckets.take("peer") == 0.0
    assert buckets.take("peer") > 0
    assert buckets.take("other") == 0.0  # another key has its own bucket
    with pytest.raises(ConfigError, match="rate limit burst"):
        RateLimit(burst=0, per_minute=1)


def test_limiter_tables_stay_bounded_under_a_million_made_up_keys() -> None:
    buckets = TokenBuckets(RateLimit(burst=1, per_minute=1), capacity=1000, clock=Clock())
    assert buckets.take("attacker") == 0.0
    for index in range(100_000):
        buckets.take(f"made-up-{index}")
        if index % 100 == 0:
            assert buckets.take("attacker") > 0  # kept in use, so never the one dropped
    assert len(buckets) == 1000


def test_a_flood_from_one_address_spends_only_its_own_budgets() -> None:
    limiter = JoinLimiter(JoinLimits(), clock=Clock())
    refused = 0
    for _ in range(10_000):  # made-up keys from one address
        try:
            limiter.admit_refused("10.0.0.9")
        except RateLimited as limited:
            refused += 1
            assert "too many refused Join requests from 10.0.0.9" in str(limited)
            assert limited.retry_after > 0
    assert refused == 10_000 - JoinLimits().per_refused_address.burst
    throttled = 0
    for _ in range(10_000):  # a registered key (the attacker's, or any other public one)
        try:
            limiter.admit_registered("attacker" + "0" * 56, "10.0.0.9")
        except RateLimited as limited:
            throttled += 1
            assert "too many Join requests for device attacker0000" in str(limited)
    assert throttled == 10_000 - JoinLimits().per_device.burst
    # The victim, on the same address and elsewhere, is not throttled by any of it.
    limiter.admit_registered("victim" + "0" * 58, "10.0.0.9")
    limiter.admit_registered("victim" + "0" * 58, "192.0.2.1")
    limiter.admit_refused("192.0.2.1")


def test_peer_addresses_are_ips_and_ipv6_counts_per_64() -> None:
    assert peer_address("ipv4:127.0.0.1:50123") == peer_address("ipv4:127.0.0.1:50999")
    assert peer_address("ipv6:[2001:db8::1]:1") == peer_address("ipv6:[2001:db8::ffff]:2")
    assert peer_address("ipv6:[::1]:5") == "::1"
    assert peer_address("garbage") == "garbage"


# -- the challenge bounds ------------------------------------------------------------


def book(clock: Clock, **bounds: int) -> ChallengeBook:
    values = {"per_device_address": 2, "per_device": 16, "total": 1000}
    values.update(bounds)
    return ChallengeBook(lifetime=30.0, clock=clock, **values)


def test_a_flood_of_another_key_cannot_evict_a_devices_challenge() -> None:
    clock = Clock()
    challenges = book(clock)
    victim = challenges.issue("victim", b"v" * 32, "10.0.0.1")
    for _ in range(10_000):  # one registered key, one address: it only replaces its own
        challenges.issue("attacker", b"a" * 32, "10.0.0.9")
    assert len(challenges) == 3
    assert challenges.take(victim.challenge_id) == victim
    assert challenges.take(victim.challenge_id) is None  # answered once


def test_a_flood_naming_a_devices_own_key_from_elsewhere_cannot_evict_its_challenge() -> None:
    clock = Clock()
    challenges = book(clock)
    victim = challenges.issue("victim", b"v" * 32, "10.0.0.1")
    refusals = []
    for index in range(10_000):
        try:
            challenges.issue("victim", b"v" * 32, f"10.1.{index // 256}.{index % 256}")
        except RateLimited as limited:
            refusals.append(limited)
    assert challenges.pending_for("victim") == 16  # bounded per key ...
    assert "device victim has 16 unanswered challenges" in str(refusals[0])
    assert refusals[0].retry_after == pytest.approx(30.0)
    assert challenges.take(victim.challenge_id) == victim  # ... and the first one survived


def test_the_total_is_bounded_by_refusing_never_by_evicting_and_challenges_expire() -> None:
    clock = Clock()
    challenges = book(clock, total=50)
    first = challenges.issue("dev-0", b"0" * 32, "10.0.0.1")
    for index in range(1, 50):
        challenges.issue(f"dev-{index}", bytes([index]) * 32, "10.0.0.1")
    with pytest.raises(RateLimited, match="the server holds 50 unanswered challenges"):
        challenges.issue("late", b"l" * 32, "10.0.0.2")
    assert challenges.take(first.challenge_id) == first
    clock.now += 31.0
    assert challenges.pending_for("dev-1") == 0 and len(challenges) == 0
    assert challenges.issue("late", b"l" * 32, "10.0.0.2").expires == clock.now + 30.0


# -- sessions ---------------------------------------------------------------------------


def test_a_renewal_keeps_the_session_and_a_fresh_join_replaces_it() -> None:
    clock = Clock()
    table = SessionTable(ttl=10.0, clock=clock)
    first, renewed = table.open(1, "dev", b"k" * 32)
    assert not renewed and not first.expired(clock.now)
    clock.now += 10.0
    old_token = first.token
    assert table.lookup(old_token) is first and first.expired(clock.now)  # told "expired"
    second, renewed = table.open(1, "dev", b"k" * 32, renews=old_token)
    assert renewed and second is first and table.lookup(old_token) is None
    assert not second.expired(clock.now) and table.is_current(first)
    third, renewed = table.open(1, "dev", b"k" * 32, renews="not-its-token")
    assert not renewed and third is not first and not table.is_current(first)
    assert len(table) == 1  # one session per device, however often it joins


# -- over real gRPC, in this process --------------------------------------------------


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[EdgeServer]:
    init_certs(tmp_path / "certs", hosts=["127.0.0.1"])
    servers: list[EdgeServer] = []

    def build(**settings: object) -> EdgeServer:
        server = EdgeServer(
            EdgeServerSettings(
                address="127.0.0.1:0",
                certs_dir=tmp_path / "certs",
                registry=tmp_path / "devices.json",
                **settings,  # type: ignore[arg-type]
            )
        )
        server.start()
        servers.append(server)
        return server

    yield build  # type: ignore[misc]
    for server in servers:
        server.stop()


def test_a_join_flood_is_refused_with_a_reason_and_a_device_still_joins(
    edge: object, tmp_path: Path
) -> None:
    server = edge()  # type: ignore[operator]
    attacker, victim = generate_key(), generate_key()
    for key, name in ((attacker, "attacker"), (victim, "victim")):
        server.registry.register(public_bytes(key.public_key()), name=name)
    channel = open_channel(f"127.0.0.1:{server.port}", tmp_path / "certs" / "ca.pem")
    stub = EdgeConnection(channel, attacker).stub
    outcomes: dict[str, int] = {}
    reasons: set[str] = set()
    for index in range(300):
        public = public_bytes((attacker if index % 2 else generate_key()).public_key())
        request = edge_pb2.JoinRequest(
            protocol_version=PROTOCOL_VERSION, device_id=device_id(public), public_key=public
        )
        try:
            stub.Join(request, timeout=10)
            outcome = "challenge"
        except grpc.RpcError as error:
            typed = edge_error_of(error)
            assert typed is not None
            outcome = f"{error.code().name} {typed.code_name}"
            if typed.code_name == "ERROR_CODE_RATE_LIMITED":
                assert typed.retry_after > 0
                reasons.add(str(typed).split(" (")[0])
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    limits = JoinLimits()
    assert outcomes == {
        "challenge": limits.per_device.burst,
        "PERMISSION_DENIED ERROR_CODE_UNKNOWN_DEVICE": limits.per_refused_address.burst,
        "RESOURCE_EXHAUSTED ERROR_CODE_RATE_LIMITED": 300
        - limits.per_device.burst
        - limits.per_refused_address.burst,
    }
    assert reasons == {
        "too many refused Join requests from 127.0.0.1",
        f"too many Join requests for device {device_id(public_bytes(attacker.public_key()))[:12]}"
        " from 127.0.0.1",
    }
    assert server.servicer.refused_joins == outcomes["RESOURCE_EXHAUSTED ERROR_CODE_RATE_LIMITED"]
    # The attacker's challenges replaced only each other; the victim joins at once.
    session = EdgeConnection(channel, victim).join()
    assert session.node_id > 0 and session.expires_unix > time.time() + 3000
    channel.close()


def test_a_device_whose_session_expires_mid_task_still_uploads_for_its_round(
    edge: object, tmp_path: Path
) -> None:
    # Heartbeats far apart, so the upload (not a heartbeat) is what finds the session expired.
    server = edge(session_ttl_seconds=1.0, heartbeat_seconds=30.0)  # type: ignore[operator]
    config = load_config(
        overrides={
            "dataset": "digits",
            "model": "mlp",
            "num-devices": 4,
            "devices-per-round": 1,
            "local-epochs": 1,
            "federation.deadline": 60.0,
        }
    )
    store = AgentStateStore(tmp_path / "agent")
    server.registry.register(public_bytes(store.create_key().public_key()), name="slow")
    inner = client_app(FleetData(config.data, num_devices=4, seed=0))

    def slow_app(message: Message, context: Context) -> Message:
        time.sleep(1.5)  # the session expires while the device trains
        return inner(message, context)

    agent = Agent(
        AgentSettings(
            server=f"127.0.0.1:{server.port}",
            state_dir=store.directory,
            ca_cert=tmp_path / "certs" / "ca.pem",
            model_key=load_public_key(tmp_path / "certs" / "model-signing.pub"),
            node_config={"partition-id": 0, "num-partitions": 4},
            give_up_after=2.0,
        ),
        slow_app,  # type: ignore[arg-type]
        store.load_key(),
    )
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if list(server.grid.get_node_ids()):
                break
            time.sleep(0.05)
        spec = model_spec(config, load_dataset("digits"))
        strategy = build_strategy(config, spec)
        arrays = to_array_record(exchanged_state(build_model(spec, seed=0)))
        for round_ in (1, 2):
            grid = server.grid
            (reply,) = grid.send_and_receive(
                strategy.configure_train(round_, arrays, ConfigRecord(), grid)
            )
            assert not reply.has_error(), reply.error.reason
            arrays, metrics = strategy.aggregate_train(round_, [reply])
            assert arrays is not None and metrics["accepted"] == 1
        assert agent.renewals == server.servicer.renewed_sessions == 2
        assert agent._epoch == 1  # renewed in place: never a fresh join, nor a new stream
        assert [s.late_dropped + s.refused_uploads for s in server.grid.history] == [0, 0]
    finally:
        agent.stop_event.set()
        server.stop()
        thread.join(timeout=10)
