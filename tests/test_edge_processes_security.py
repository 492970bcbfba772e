"""What the edge server refuses, as real processes: strangers, revoked keys, bad uploads, tampering.

Real ``stamen server`` and ``stamen agent`` processes over TLS on 127.0.0.1,
so these are marked slow: ``pytest -m slow tests/test_edge_processes_security.py``.
Nothing refused may touch a round; the server keeps serving.
"""

from __future__ import annotations

import contextlib
import sys

import pytest
from edge_site import Site, digits_agent, digits_server, metrics, run, wait_for

from stamen.client.agent import AgentExit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals"),
]


@pytest.mark.timeout(300)
def test_unregistered_and_revoked_devices_are_refused_without_touching_the_round(
    site: Site,
) -> None:
    good = site.device("good")
    stranger = site.device("stranger", register=False)
    revoked = site.device("revoked")
    done = run("devices", "revoke", "revoked", "--registry", str(site.registry), cwd=site.root)
    assert done.returncode == 0, done.stderr
    listing = run("devices", "list", "--registry", str(site.registry), cwd=site.root).stdout
    assert "revoked" in listing and "good" in listing and "stranger" not in listing

    server, port = site.server(*digits_server(2, 1, 1), "--deadline", "60")
    refused = site.agent("stranger", stranger, port, *digits_agent(0, 1))
    banned = site.agent("revoked", revoked, port, *digits_agent(0, 1))
    assert refused.wait(timeout=120) == AgentExit.REFUSED
    assert banned.wait(timeout=120) == AgentExit.REFUSED
    assert "is not registered on this server" in site.text("stranger")
    assert "was revoked on this server" in site.text("revoked")
    assert "Traceback" not in site.text("stranger") + site.text("revoked")

    site.agent("good", good, port, *digits_agent(0, 1))
    assert server.wait(timeout=240) == 0, site.text("server")[-3000:]
    assert [(r["sampled"], r["accepted"], r["rejected"]) for r in metrics(site)] == [(1, 1, 0)] * 2


@pytest.mark.timeout(300)
def test_oversized_and_corrupt_uploads_are_refused_and_the_server_keeps_serving(
    site: Site,
) -> None:
    import threading

    import grpc

    from stamen.client.agent import EdgeConnection, EdgeProtocolError, open_channel
    from stamen.client.agent.state import AgentStateStore
    from stamen.contract.edge import edge_error_of, upload_signing_bytes
    from stamen.protos.edge.v1 import edge_pb2

    states = [site.device(f"dev{i}") for i in range(3)]
    server, port = site.server(*digits_server(2, 3, 3), "--deadline", "15", "--max-payload-mb", "1")
    for pid in range(2):
        site.agent(f"dev{pid}", states[pid], port, *digits_agent(pid, 3))

    # The third device is a hostile client in this process: a registered key
    # that answers its task with bad uploads (signed: it holds its own key).
    key = AgentStateStore(states[2]).load_key()
    hostile = EdgeConnection(open_channel(f"127.0.0.1:{port}", site.certs / "ca.pem"), key)
    session = hostile.join()
    tasks: list[edge_pb2.Task] = []

    def receive() -> None:
        with contextlib.suppress(grpc.RpcError, EdgeProtocolError):
            tasks.extend(hostile.tasks(session))

    threading.Thread(target=receive, daemon=True).start()
    wait_for(lambda: tasks, 120, server)
    task_id, group_id = tasks[0].task_id, tasks[0].group_id

    refusals = []
    for whole, data, declared in [
        (False, b"x" * 10, 64 * 2**20),  # declares more than the limit
        (False, b"not a record" * 100, None),  # parses as nothing Flower knows
        (True, b"x" * 10, 11),  # sent whole, but a byte short of what it declares
    ]:
        header = edge_pb2.UploadHeader(
            session=session.token,
            task_id=task_id,
            total_bytes=declared or len(data),
            sha256=bytes(32),  # a wrong checksum too
            signature=key.sign(upload_signing_bytes(task_id, group_id, bytes(32), False)),
        )
        chunk = edge_pb2.UploadChunk(header=header, data=data)
        with pytest.raises(grpc.RpcError) as refused:
            if whole:
                hostile.stub.UploadWhole(chunk)
            else:
                hostile.stub.Upload(iter([chunk]))
        typed = edge_error_of(refused.value)
        assert typed is not None, refused.value
        refusals.append(typed)
    with pytest.raises(grpc.RpcError) as refused:  # no header: nothing says whose it is
        hostile.stub.UploadWhole(edge_pb2.UploadChunk(data=b"x"))
    refusals.append(edge_error_of(refused.value))
    assert [e.code_name if e else None for e in refusals] == [
        "ERROR_CODE_PAYLOAD_TOO_LARGE",
        "ERROR_CODE_CORRUPT_UPLOAD",
        "ERROR_CODE_CORRUPT_UPLOAD",
        "ERROR_CODE_BAD_REQUEST",
    ]
    assert "exceeds the server's limit" in str(refusals[0])
    hostile.close()

    assert server.wait(timeout=200) == 0, site.text("server")[-3000:]
    summary = site.summary()
    assert summary["rounds"] == 2
    assert summary["edge"]["refused_uploads"] == 3
    assert metrics(site)[0]["accepted"] == 2  # the real agents' uploads, sent whole
    assert metrics(site)[1]["accepted"] == 2


@pytest.mark.timeout(300)
def test_a_real_agent_refuses_a_tampered_model(site: Site) -> None:
    """An edge server that flips one bit of the model after signing it, and a real agent."""
    from flwr.app import ConfigRecord

    from stamen.config import load_config
    from stamen.data import load_dataset
    from stamen.models import build_model, exchanged_state
    from stamen.server.edge import EdgeServer, EdgeServerSettings
    from stamen.server.federation import build_strategy, model_spec
    from stamen.transport.deltas import to_array_record

    state = site.device("dev0")
    server = EdgeServer(
        EdgeServerSettings(
            address="127.0.0.1:0",
            certs_dir=site.certs,
            registry=site.registry,
        )
    )
    port = server.start()
    try:
        agent = site.agent("dev0", state, port, *digits_agent(0, 1))
        wait_for(lambda: list(server.grid.get_node_ids()), 120, agent)
        config = load_config(
            overrides={
                "dataset": "digits",
                "model": "mlp",
                "num-devices": 1,
                "devices-per-round": 1,
                "federation.deadline": 120.0,
            }
        )
        spec = model_spec(config, load_dataset("digits"))
        strategy = build_strategy(config, spec)
        arrays = to_array_record(exchanged_state(build_model(spec, seed=0)))
        grid = server.grid
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
        assert "refused the task" in site.text("dev0")
        assert not (state / "state.npz").exists()  # the agent loaded nothing

        grid._seal = sound_seal  # type: ignore[method-assign]
        (reply,) = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(), grid))
        assert not reply.has_error()
        assert strategy.aggregate_train(1, [reply])[0] is not None
        assert (state / "state.npz").exists()
    finally:
        server.stop()
