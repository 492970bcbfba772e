"""Sessions and signatures as real processes: a stolen token, a Join flood, an expired session.

Real ``stamen agent`` processes (and, for the flood and expiry, a real
``stamen server``) over TLS on 127.0.0.1, so these are marked slow:
``pytest -m slow tests/test_edge_processes_sessions.py -s`` (``-s`` prints the
measured figures). Each test is bounded in time and kills what it started.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from edge_site import Site, digits_agent, digits_server, metrics, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals"),
]


def key_of(state: Path) -> Any:
    from stamen.client.agent.state import AgentStateStore

    return AgentStateStore(state).load_key()


@pytest.mark.timeout(300)
def test_a_stolen_session_token_cannot_upload_and_the_round_keeps_the_devices_update(
    site: Site,
) -> None:
    from flwr.app import ConfigRecord

    from stamen.client.agent import EdgeConnection, EdgeProtocolError, SessionInfo, open_channel
    from stamen.config import load_config
    from stamen.contract.edge import edge_error_of, generate_key, sha256
    from stamen.data import load_dataset
    from stamen.models import build_model, exchanged_state
    from stamen.protos.edge.v1 import edge_pb2
    from stamen.server.edge import EdgeServer, EdgeServerSettings
    from stamen.server.federation import build_strategy, model_spec
    from stamen.transport.deltas import to_array_record

    state = site.device("dev0")
    server = EdgeServer(
        EdgeServerSettings(address="127.0.0.1:0", certs_dir=site.certs, registry=site.registry)
    )
    port = server.start()
    try:
        agent = site.agent("dev0", state, port, *digits_agent(0, 1))
        node = wait_for(lambda: list(server.grid.get_node_ids()), 120, agent)[0]
        # The thief holds the device's session token (read off the wire, or off the device)
        # but not its private key.
        session = server.servicer.session_of(node)
        assert session is not None
        token = session.token
        thief = EdgeConnection(
            open_channel(f"127.0.0.1:{port}", site.certs / "ca.pem"), generate_key()
        )
        forged = b"a forged update" * 50
        refusals: list[tuple[str, str, str]] = []

        def steal_the_round(task: edge_pb2.Task) -> None:
            # Once with no signature, once signed by the thief's own key.
            unsigned = edge_pb2.UploadHeader(
                session=token, task_id=task.task_id, total_bytes=len(forged), sha256=sha256(forged)
            )
            try:
                thief.stub.Upload(iter([edge_pb2.UploadChunk(header=unsigned, data=forged)]))
            except grpc.RpcError as error:
                typed = edge_error_of(error)
                assert typed is not None, error
                refusals.append((error.code().name, typed.code_name, str(typed)))
            stolen = SessionInfo(token, node, 5.0, 2**20, 65536)
            try:
                thief.upload(stolen, task, forged)
            except EdgeProtocolError as error:
                refusals.append(("UNAUTHENTICATED", error.code_name, str(error)))

        config = load_config(
            overrides={
                "dataset": "digits",
                "model": "mlp",
                "num-devices": 1,
                "devices-per-round": 1,
                "local-epochs": 20,  # the device trains for a while; the thief is quicker
                "federation.deadline": 120.0,
            }
        )
        spec = model_spec(config, load_dataset("digits"))
        strategy = build_strategy(config, spec)
        arrays = to_array_record(exchanged_state(build_model(spec, seed=0)))
        grid = server.grid
        sound_seal = grid._seal

        def seal_and_steal(message, task_id, deadline):  # type: ignore[no-untyped-def]
            task = sound_seal(message, task_id, deadline)
            threading.Thread(target=steal_the_round, args=(task,), daemon=True).start()
            return task

        grid._seal = seal_and_steal  # type: ignore[method-assign]
        (reply,) = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(), grid))
        assert not reply.has_error(), reply.error.reason
        assert reply.metadata.src_node_id == node  # the device's own update
        new_arrays, round_metrics = strategy.aggregate_train(1, [reply])
        assert new_arrays is not None and round_metrics["accepted"] == 1
        assert len(refusals) == 2, refusals
        for status, code, message in refusals:
            assert (status, code) == ("UNAUTHENTICATED", "ERROR_CODE_BAD_SIGNATURE"), message
            assert "a session token alone cannot upload" in message
        assert grid.history[-1].refused_uploads == 2
        assert "upload refused" not in site.text("dev0")
        thief.close()
    finally:
        server.stop()


def rss_mb(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 2**20


@pytest.mark.timeout(420)
def test_ten_thousand_joins_from_one_address_do_not_stop_a_device_joining_and_training(
    site: Site,
) -> None:
    from stamen.client.agent import EdgeConnection, open_channel
    from stamen.contract.edge import (
        PROTOCOL_VERSION,
        device_id,
        edge_error_of,
        generate_key,
        public_bytes,
    )
    from stamen.protos.edge.v1 import edge_pb2

    victim = site.device("victim")
    probe = site.device("probe")
    attacker = site.device("attacker")
    bystander = site.device("bystander")  # registered, never joins: its key is just public
    server, port = site.server(*digits_server(400, 1, 1), "--deadline", "60", "--wait", "120")
    address = f"127.0.0.1:{port}"
    ca = site.certs / "ca.pem"
    public_keys = [
        public_bytes(key_of(attacker).public_key()),
        public_bytes(key_of(bystander).public_key()),
    ]
    total, workers, rate = 10_000, 8, 300.0  # paced to last about 33 s
    outcomes: dict[str, int] = {}
    sent = [0]
    lock = threading.Lock()
    started = time.monotonic()

    def flood(worker: int) -> None:
        channel = open_channel(address, ca)
        stub = EdgeConnection(channel, generate_key()).stub
        for index in range(worker, total, workers):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # Half made-up keys, half registered public keys that are not the victim's.
            key = (
                public_keys[index % 4 // 2]
                if index % 2
                else public_bytes(generate_key().public_key())
            )
            request = edge_pb2.JoinRequest(
                protocol_version=PROTOCOL_VERSION, device_id=device_id(key), public_key=key
            )
            try:
                stub.Join(request, timeout=10)
                outcome = "challenge"
            except grpc.RpcError as error:
                typed = edge_error_of(error)
                outcome = f"{error.code().name} {typed.code_name if typed else '-'}"
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                sent[0] += 1
        channel.close()

    def device_connected() -> bool:
        return "devices connected: 1/1" in site.text("server")

    rss_before = rss_mb(server.pid)
    threads = [threading.Thread(target=flood, args=(w,), daemon=True) for w in range(workers)]
    for thread in threads:
        thread.start()
    wait_for(lambda: sent[0] >= 2500, 60, server)
    spawned = time.monotonic()
    site.agent("victim", victim, port, *digits_agent(0, 1), "--give-up-after", "60")

    # Until the device connects the server only waits, so its growth is the flood's own.
    rss_flood_only, rss_peak = rss_before, rss_before
    joined_after, sent_at_join = 0.0, 0
    probe_joins: list[float] = []
    probing = EdgeConnection(open_channel(address, ca), key_of(probe))
    while any(t.is_alive() for t in threads):
        rss = rss_mb(server.pid)
        rss_peak = max(rss_peak, rss)
        if not joined_after:
            rss_flood_only = max(rss_flood_only, rss)
            if device_connected():
                joined_after, sent_at_join = time.monotonic() - spawned, sent[0]
        if len(probe_joins) < 8 and sent[0] >= 1000 * (len(probe_joins) + 1):
            began = time.perf_counter()
            probing.join()  # a legitimate device on the flooded address, mid-flood
            probe_joins.append(time.perf_counter() - began)
        time.sleep(0.1)
    flood_seconds = time.monotonic() - started
    rounds_during_flood = len(metrics(site)) if (site.root / "results").exists() else 0
    for thread in threads:
        thread.join(timeout=30)
    probing.close()

    figures = {
        "flood_requests": sent[0],
        "flood_seconds": round(flood_seconds, 1),
        "flood_rate_per_s": round(sent[0] / flood_seconds),
        "outcomes": outcomes,
        "probe_join_ms_median": round(1000 * statistics.median(probe_joins), 1),
        "probe_join_ms_max": round(1000 * max(probe_joins), 1),
        "agent_start_to_connected_s": round(joined_after, 1),
        "flood_requests_before_the_agent_connected": sent_at_join,
        "rounds_trained_during_flood": rounds_during_flood,
        "server_rss_mb_before": round(rss_before, 1),
        "server_rss_mb_flood_only_peak": round(rss_flood_only, 1),
        "server_rss_mb_peak_with_training": round(rss_peak, 1),
    }
    print("\njoin flood:", json.dumps(figures))
    assert sent[0] == total and flood_seconds < 60, figures
    assert joined_after and sent_at_join < total, figures  # it joined mid-flood
    assert len(probe_joins) == 8  # every probe joined at its first try
    # The device trained while the flood ran, and in every round since.
    assert rounds_during_flood >= 1, figures
    assert all(r["accepted"] == 1 and r["rejected"] == 0 for r in metrics(site))
    assert outcomes.get("challenge", 0) <= 2 * (10 + 10)  # two keys: bursts plus refill
    assert set(outcomes) <= {
        "challenge",
        "RESOURCE_EXHAUSTED ERROR_CODE_RATE_LIMITED",
        "PERMISSION_DENIED ERROR_CODE_UNKNOWN_DEVICE",
    }
    assert outcomes["RESOURCE_EXHAUSTED ERROR_CODE_RATE_LIMITED"] >= total - 200
    assert rss_flood_only - rss_before < 32, figures
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.timeout(300)
def test_an_expired_session_is_renewed_without_the_device_losing_its_round(site: Site) -> None:
    state = site.device("dev0")
    # Rounds longer than the session: the session expires while the device trains.
    rounds = [*digits_server(6, 1, 1), "--local-epochs", "5", "--deadline", "60"]
    server, port = site.server(*rounds, "--session-ttl", "1")
    agent = site.agent("dev0", state, port, *digits_agent(0, 1))
    assert server.wait(timeout=240) == 0, site.text("server")[-3000:]
    log = site.text("dev0")
    summary = site.summary()
    assert summary["rounds"] == 6
    assert [(r["accepted"], r["rejected"]) for r in metrics(site)] == [(1, 0)] * 6
    edge = summary["edge"]
    assert (edge["timed_out"], edge["late_dropped"], edge["refused_uploads"]) == (0, 0, 0)
    during_the_run = log[: log.rindex("done in")]
    renewals = during_the_run.count("session expired; renewed it")
    # How many times the 1 s session runs out depends on how fast the rounds go;
    # that it ran out at least once and cost no round is the behaviour under test.
    assert renewals >= 1, log[-3000:]
    assert during_the_run.count("joined 127.0.0.1") == 1  # renewed in place: no fresh join
    assert "upload refused" not in log and "reconnecting" not in during_the_run
    print(f"\n{renewals} session renewals over 6 rounds with a 1 s session TTL")
    agent.wait(timeout=60)
