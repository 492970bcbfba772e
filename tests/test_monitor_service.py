"""The monitor gRPC service against a real small federation: history, controls, auth, TLS,
the Prometheus endpoint and ``stamen status``."""

from __future__ import annotations

import datetime
import ipaddress
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from stamen.cli.main import app
from stamen.config import load_config
from stamen.console import ConnectionSettings, MonitorClient, MonitorError
from stamen.launch import simulate
from stamen.protos.monitor.v1 import monitor_pb2 as pb
from stamen.server.monitor import MonitorSettings, MonitorState, Role, TokenStore, start_monitor
from stamen.server.monitor.session import MonitoredRun

OPERATOR = "operator-token-for-tests"
READ_ONLY = "read-only-token-for-tests"
TOKENS = TokenStore({OPERATOR: Role.OPERATOR, READ_ONLY: Role.READ_ONLY})
ROUNDS = 30


def wait_until(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll ``predicate`` until it holds; fail with a clear message if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not become true")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def run() -> Iterator[MonitoredRun]:
    """A real federation, paused after its first round, with the monitor and metrics serving."""
    config = load_config(
        overrides={
            "dataset": "digits",
            "model": "mlp",
            "rounds": ROUNDS,
            "num-devices": 6,
            "devices-per-round": 3,
        }
    )
    monitored = MonitoredRun(config, MonitorSettings(tokens=TOKENS), metrics_port=0)
    with monitored:
        monitored.control.pause()
        monitored.run_in_background(simulate)
        wait_until(lambda: monitored.state.state.value == "paused")
        yield monitored


def client(run: MonitoredRun, token: str | None) -> MonitorClient:
    return MonitorClient(ConnectionSettings(run.server.address, token))


def test_a_late_subscriber_replays_the_history(run: MonitoredRun) -> None:
    events = []
    for event in client(run, READ_ONLY).watch():
        events.append(event)
        if event.kind == pb.EVENT_KIND_STATE_CHANGED and event.message == "paused after round 1":
            break
    kinds = [e.kind for e in events]
    assert pb.EVENT_KIND_RUN_STARTED in kinds
    ended = next(e for e in events if e.kind == pb.EVENT_KIND_ROUND_ENDED)
    assert ended.round == 1 and ended.total_rounds == ROUNDS
    assert len(ended.participants) == 3 and ended.accepted == 3
    assert ended.uplink_bytes > 0 and ended.uplink_compression > 1
    assert 0.0 <= ended.accuracy <= 1.0 and ended.duration_seconds > 0


def test_status_and_devices_describe_the_run(run: MonitoredRun) -> None:
    watcher = client(run, READ_ONLY)
    status = watcher.status()
    assert status.strategy == "CompressedFedAvg"
    assert status.state == pb.RUN_STATE_PAUSED and status.round == 1
    assert status.role == "read-only" and status.num_devices == 6
    assert json.loads(status.config_json)["federation"]["rounds"] == ROUNDS
    devices = watcher.devices()
    assert len(devices) == 3
    assert all(d.rounds == 1 and d.uplink_bytes > 0 and d.last_seen_unix > 0 for d in devices)


def test_missing_and_wrong_tokens_are_refused_plainly(run: MonitoredRun) -> None:
    with pytest.raises(MonitorError, match="refused: no token") as missing:
        client(run, None).status()
    assert missing.value.code is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(MonitorError, match="the token is not valid") as wrong:
        client(run, "not-a-real-token").devices()
    assert wrong.value.code is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(MonitorError, match="refused: no token"):
        next(iter(client(run, None).watch()))


def test_a_read_only_token_cannot_use_controls(run: MonitoredRun) -> None:
    with pytest.raises(MonitorError, match="read-only: it cannot pause") as denied:
        client(run, READ_ONLY).control(pb.CONTROL_ACTION_RESUME)
    assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert run.control.state.value == "paused"


def test_bad_control_values_are_refused_and_the_server_keeps_running(run: MonitoredRun) -> None:
    operator = client(run, OPERATOR)
    with pytest.raises(MonitorError, match="must be <= the fleet size 6") as refused:
        operator.control(pb.CONTROL_ACTION_SET_DEVICES_PER_ROUND, devices_per_round=99)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(MonitorError, match="> 0 seconds") as bad_deadline:
        operator.control(pb.CONTROL_ACTION_SET_DEADLINE, deadline=-5)
    assert bad_deadline.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert operator.status().state == pb.RUN_STATE_PAUSED


def test_a_deadline_change_reaches_the_strategy(run: MonitoredRun) -> None:
    client(run, OPERATOR).control(pb.CONTROL_ACTION_SET_DEADLINE, deadline=10)
    assert run.control.deadline == 10


def test_prometheus_endpoint_serves_the_run(run: MonitoredRun) -> None:
    assert run.metrics is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{run.metrics.port}/metrics", timeout=30) as r:
        text = r.read().decode()
    lines = set(text.splitlines())
    assert "stamen_round 1.0" in lines
    assert f"stamen_total_rounds {float(ROUNDS)}" in lines
    assert 'stamen_run_state{state="paused"} 1.0' in lines
    uplink = next(line for line in lines if line.startswith("stamen_uplink_bytes_total "))
    assert float(uplink.split()[1]) == run.state.status().uplink_bytes > 0
    assert any(line.startswith("stamen_accuracy ") for line in lines)
    assert {"stamen_stragglers_total 0.0", "stamen_dropouts_total 0.0"} <= lines


def test_stamen_status_prints_one_json_snapshot(run: MonitoredRun) -> None:
    result = CliRunner().invoke(
        app, ["status", "--server", run.server.address, "--token", READ_ONLY, "--devices"]
    )
    assert result.exit_code == 0, result.output
    snapshot = json.loads(result.output)
    assert snapshot["status"]["state"] == "paused"
    assert snapshot["status"]["config"]["federation"]["num_devices"] == 6
    assert snapshot["last_round"]["round"] == 1
    assert snapshot["devices"]["count"] == 3 and len(snapshot["devices"]["list"]) == 3
    refused = CliRunner().invoke(app, ["status", "--server", run.server.address])
    assert refused.exit_code == 2
    assert "refused: no token" in refused.output


def test_operator_controls_take_effect_and_stop_writes_a_summary(run: MonitoredRun) -> None:
    operator = client(run, OPERATOR)
    reply = operator.control(pb.CONTROL_ACTION_SET_DEVICES_PER_ROUND, devices_per_round=4)
    assert reply.status.devices_per_round == 4
    assert operator.control(pb.CONTROL_ACTION_RESUME).message == "resumed"
    wait_until(lambda: run.state.status().round >= 2)
    assert operator.control(pb.CONTROL_ACTION_STOP).message == "stopping after the current round"
    assert run.thread is not None
    run.thread.join(timeout=120)
    assert run.error is None and run.summary is not None
    assert run.summary["stopped"] is True and 2 <= run.summary["rounds"] < ROUNDS
    started = [
        e
        for e in run.state.events_after(0)
        if e.kind == pb.EVENT_KIND_ROUND_STARTED and e.round > 1
    ]
    assert started and all(len(e.participants) == 4 for e in started)
    assert operator.status().state == pb.RUN_STATE_STOPPED
    with pytest.raises(MonitorError, match="the run has stopped"):
        operator.control(pb.CONTROL_ACTION_PAUSE)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and localhost, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stamen-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "monitor.pem", tmp_path / "monitor.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_monitor_serves_tls_clients_only(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    state = MonitorState()
    state.on_start(total_rounds=5, initial_accuracy=0.1)
    server = start_monitor(MonitorSettings(tls_cert=cert, tls_key=key, tokens=TOKENS), state)
    try:
        secure = MonitorClient(ConnectionSettings(server.address, READ_ONLY, tls_ca=cert))
        assert secure.status().total_rounds == 5
        plain = MonitorClient(ConnectionSettings(server.address, READ_ONLY))
        with pytest.raises(MonitorError, match="cannot reach the monitor"):
            plain.status()
    finally:
        server.stop()


def test_bad_monitor_settings_are_one_line_errors(tmp_path: Path) -> None:
    from stamen.core.errors import ConfigError

    with pytest.raises(ConfigError, match="needs both a certificate and a key"):
        MonitorSettings(tls_cert=tmp_path / "x.pem", tokens=TOKENS)
    with pytest.raises(ConfigError, match="at least one token"):
        MonitorSettings()
    with pytest.raises(ConfigError, match=r"port must be in 0\.\.65535"):
        MonitorSettings(port=70000, tokens=TOKENS)
    with pytest.raises(ConfigError, match="--server must be HOST:PORT"):
        ConnectionSettings("localhost", READ_ONLY)


def test_simulate_monitor_flags_fail_with_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["simulate", "--dataset", "digits", "--model", "mlp", "--out", str(tmp_path / "r")]
    alone = runner.invoke(app, [*base, "--metrics-port", "0"])
    assert alone.exit_code == 2
    assert "--metrics-port needs --monitor-port" in alone.output
    missing = runner.invoke(
        app, [*base, "--monitor-port", "0", "--monitor-token-file", str(tmp_path / "none")]
    )
    assert missing.exit_code == 2
    assert "cannot read token file" in missing.output
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
