"""Unit tests of the edge pieces: keys, registry, certificates, guards, state, checkpoints."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from stamen.client.agent import AgentState, AgentStateStore, Backoff, GuardSettings
from stamen.client.agent.guards import power_state, skip_reason
from stamen.contract.edge import (
    device_id,
    generate_key,
    load_private_key,
    load_public_key,
    public_bytes,
    task_signing_bytes,
    verify_signature,
)
from stamen.core.errors import ConfigError
from stamen.protos.edge.v1 import edge_pb2
from stamen.server.checkpoint import Checkpoint, CheckpointStore
from stamen.server.edge import DeviceRegistry, DeviceStatus, init_certs


def test_task_signatures_bind_content_node_and_deadline() -> None:
    key = generate_key()
    public = public_bytes(key.public_key())
    task = edge_pb2.Task(task_id="t", message_type="train", content_sha256=b"h" * 32)
    signature = key.sign(task_signing_bytes(task, node_id=7))
    assert verify_signature(public, signature, task_signing_bytes(task, node_id=7))
    assert not verify_signature(public, signature, task_signing_bytes(task, node_id=8))
    task.deadline_unix = 1.0
    assert not verify_signature(public, signature, task_signing_bytes(task, node_id=7))
    assert not verify_signature(public, b"short", b"anything")


def test_keys_round_trip_and_bad_files_fail_in_one_line(tmp_path: Path) -> None:
    store = AgentStateStore(tmp_path / "agent")
    key = store.create_key()
    assert load_private_key(store.key_path).private_bytes_raw() == key.private_bytes_raw()
    assert device_id(load_public_key(store.public_key_path)) == device_id(
        public_bytes(key.public_key())
    )
    assert (store.key_path.stat().st_mode & 0o777) == 0o600
    with pytest.raises(ConfigError, match="exists"):
        store.create_key()
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM"):
        load_public_key(tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="stamen agent keygen"):
        AgentStateStore(tmp_path / "none").load_key()


def test_registry_registers_revokes_and_rejects_a_malformed_file(tmp_path: Path) -> None:
    registry = DeviceRegistry(tmp_path / "devices.json")
    first = public_bytes(generate_key().public_key())
    second = public_bytes(generate_key().public_key())
    registry.register(first, name="pi-1")
    registry.register(second)
    assert registry.status(first) is DeviceStatus.REGISTERED
    assert registry.status(public_bytes(generate_key().public_key())) is DeviceStatus.UNKNOWN
    with pytest.raises(ConfigError, match="already registered as 'pi-1'"):
        registry.register(second, name="pi-1")
    registry.revoke(device_id(second)[:10])
    # A second reader (the running server) sees the change on its next call.
    assert DeviceRegistry(registry.path).status(second) is DeviceStatus.REVOKED
    with pytest.raises(ConfigError, match="no device"):
        registry.revoke("nobody")
    registry.path.write_text(json.dumps({"devices": [{"bad": 1}]}))
    with pytest.raises(ConfigError, match="malformed"):
        DeviceRegistry(registry.path).entries()


def test_certs_init_writes_a_ca_signed_server_certificate(tmp_path: Path) -> None:
    from cryptography import x509

    paths = init_certs(tmp_path, hosts=["edge.example", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["edge.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert (paths.server_key.stat().st_mode & 0o777) == 0o600
    with pytest.raises(ConfigError, match="--force"):
        init_certs(tmp_path, hosts=["x"])


def write_supply(root: Path, name: str, **values: str) -> None:
    (root / name).mkdir(parents=True)
    for key, value in values.items():
        (root / name / key).write_text(value + "\n")


def test_battery_guard_reads_the_power_supply_tree(tmp_path: Path) -> None:
    write_supply(tmp_path, "BAT0", type="Battery", capacity="15", status="Discharging")
    write_supply(tmp_path, "AC", type="Mains", online="0")
    low = GuardSettings(min_battery=30, power_supply_dir=tmp_path)
    assert power_state(tmp_path).battery_percent == 15
    assert skip_reason(low) == "battery at 15% and not charging (minimum 30%)"
    assert "not charging" in str(
        skip_reason(GuardSettings(require_charging=True, power_supply_dir=tmp_path))
    )
    (tmp_path / "AC" / "online").write_text("1\n")
    assert skip_reason(low) is None  # charging: train even on a low battery
    # A board without a battery never skips for it.
    assert skip_reason(GuardSettings(min_battery=30, power_supply_dir=tmp_path / "none")) is None


def test_memory_and_cpu_guards(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "memory" in str(skip_reason(GuardSettings(max_memory_percent=0.001)))
    assert skip_reason(GuardSettings(max_memory_percent=100)) is None
    monkeypatch.setattr("os.getloadavg", lambda: (64.0, 0.0, 0.0))
    assert "CPU load" in str(skip_reason(GuardSettings(max_cpu_load=0.5)))
    with pytest.raises(ConfigError, match="min battery"):
        GuardSettings(min_battery=120)


def test_backoff_grows_with_jitter_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(base=1.0, cap=10.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(40)]
    assert all(0 <= d <= 10.0 for d in delays)
    assert max(delays[:2]) <= 2.0 and max(delays[10:]) > 2.0
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_agent_state_survives_a_restart_and_a_torn_file_is_ignored(tmp_path: Path) -> None:
    store = AgentStateStore(tmp_path)
    residual = {"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    before = {"fc.weight": -residual["fc.weight"]}
    store.save(
        AgentState(
            round=4, residual=residual, model=b"\x01\x02", trained=b"\xab", residual_before=before
        )
    )
    loaded = store.load()
    assert loaded.round == 4 and loaded.model == b"\x01\x02" and loaded.trained == b"\xab"
    np.testing.assert_array_equal(loaded.residual["fc.weight"], residual["fc.weight"])
    np.testing.assert_array_equal(loaded.residual_before["fc.weight"], before["fc.weight"])
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed into place
    (tmp_path / "state.npz").write_bytes(b"torn")
    assert store.load() == AgentState()


def test_checkpoint_round_trip_and_a_corrupt_checkpoint_is_one_error(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.load() is None
    checkpoint = Checkpoint(
        round=3,
        arrays={"b": np.ones(2, np.float32), "a": np.zeros((2, 2), np.float32)},
        strategy={"rng": {"state": 1}, "masks": {"a": np.array([[True, False], [False, True]])}},
        records=[{"round": 1}],
        config={"preset": "edge"},
    )
    store.save(checkpoint)
    loaded = store.load()
    assert loaded is not None
    assert list(loaded.arrays) == ["b", "a"]  # model order kept
    assert loaded.strategy["masks"]["a"].dtype == bool
    assert loaded.strategy["rng"] == checkpoint.strategy["rng"]
    assert (loaded.records, loaded.config) == (checkpoint.records, checkpoint.config)
    store.path.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot be read"):
        store.load()


BASE_INSTALL_PROBE = """
import sys
EXTRAS = {"ray", "sklearn", "zarr", "mlxtend", "seglearn", "matplotlib", "pureml"}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in EXTRAS:
            raise ImportError("not in the base install: " + name)
sys.meta_path.insert(0, Blocker())
import numpy as np
np.savez(sys.argv[1], x_train=np.random.rand(40, 64).astype("float32"),
         y_train=np.arange(40) % 10, x_test=np.random.rand(10, 64).astype("float32"),
         y_test=np.arange(10) % 10)
import stamen.cli.main
from stamen.cli.agent_command import _client_app
print(type(_client_app("npz:" + sys.argv[1], "iid", 0.3, 0, 0, 1)).__name__)
"""


def test_the_agent_runs_on_the_base_install(tmp_path: Path) -> None:
    """No Ray, no dataset or plotting packages: the agent's import path and its data."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", BASE_INSTALL_PROBE, str(tmp_path / "own.npz")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ClientApp"
