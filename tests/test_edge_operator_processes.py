"""An operator's day as real processes: how ``stamen agent`` ends, and what a restart finds.

Each agent here exits by itself with its status (``stamen.client.agent.exits``)
and one line saying what and the fix: a TLS handshake that cannot succeed (wrong
CA, a name the certificate lacks, TLS on one side only, both ways round), no
server at all, and refusals it cannot fix (its data does not fit the server's
model, another server's model-signing key). Then the server, started again on
the finished run's state directory, says so before any device connects.
Real ``stamen`` processes over loopback, so slow:
``pytest -m slow tests/test_edge_operator_processes.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from edge_site import ENV, STAMEN, Site, digits_agent, digits_server, metrics, run, wait_for

from stamen.client.agent import AgentExit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX process groups"),
]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """Certificates for 127.0.0.1 only (so that ``localhost`` is a name they lack)."""
    made = Site(tmp_path)
    done = run("certs", "init", str(made.certs), "--host", "127.0.0.1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    try:
        yield made
    finally:
        made.stop_all()


def other_certs(site: Site, *, ca_from: Path, key_from: Path) -> Path:
    """A certs folder for an agent: ``ca.pem`` from one folder, ``model-signing.pub`` another's."""
    folder = site.root / f"certs-{ca_from.name}-{key_from.name}"
    folder.mkdir()
    shutil.copy(ca_from / "ca.pem", folder / "ca.pem")
    shutil.copy(key_from / "model-signing.pub", folder / "model-signing.pub")
    return folder


def agent(site: Site, name: str, server: str, *args: str) -> subprocess.Popen[bytes]:
    state = site.device(name)
    return site.spawn(name, "agent", "--server", server, "--state-dir", str(state), *args)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def last_line(site: Site, name: str) -> str:
    """The agent's last line: what it says as it exits."""
    return " ".join(site.text(name).strip().splitlines()[-1].split())


def assert_quiet(site: Site, name: str) -> None:
    """One ``error:`` line, no traceback, and no gRPC C-core log lines."""
    text = site.text(name)
    assert text.count("error:") == 1, text
    assert "Traceback" not in text, text
    assert not re.search(r"^[IWE]\d{4} ", text, re.MULTILINE), text  # absl/C-core format
    assert "ssl_transport_security" not in text, text


@pytest.mark.timeout(600)
def test_tls_failures_and_a_missing_server_exit_non_zero_with_one_line_each(site: Site) -> None:
    _, tls_port = site.server(*digits_server(1, 1, 1), "--wait", "600")
    _, plain_port = site.server(
        *digits_server(1, 1, 1), "--wait", "600", "--insecure", name="plain-server"
    )
    run("certs", "init", str(site.root / "elsewhere"), "--host", "127.0.0.1", cwd=site.root)
    wrong_ca = other_certs(site, ca_from=site.root / "elsewhere", key_from=site.certs)
    data = digits_agent(0, 1)
    certs = ["--certs", str(site.certs)]
    agents = {
        "wrong-ca": agent(
            site, "wrong-ca", f"127.0.0.1:{tls_port}", "--certs", str(wrong_ca), *data
        ),
        "name": agent(site, "name", f"localhost:{tls_port}", *certs, *data),
        "plain-agent": agent(
            site, "plain-agent", f"127.0.0.1:{tls_port}", *certs, "--insecure", *data
        ),
        "tls-agent": agent(site, "tls-agent", f"127.0.0.1:{plain_port}", *certs, *data),
        "no-server": agent(
            site,
            "no-server",
            f"127.0.0.1:{closed_port()}",
            *certs,
            "--give-up-after",
            "2",
            *data,
        ),
    }
    codes = {name: process.wait(timeout=400) for name, process in agents.items()}
    assert codes == {
        "wrong-ca": AgentExit.TLS,
        "name": AgentExit.TLS,
        "plain-agent": AgentExit.TLS,
        "tls-agent": AgentExit.TLS,
        "no-server": AgentExit.GAVE_UP,
    }, {name: site.text(name)[-800:] for name in agents}
    assert last_line(site, "wrong-ca").startswith(
        f"error: wrong CA: the server at 127.0.0.1:{tls_port} shows a TLS certificate that "
        f"{wrong_ca}/ca.pem did not sign; copy ca.pem from the certs folder"
    )
    assert last_line(site, "name").startswith(
        "error: name mismatch: the server's TLS certificate does not name localhost "
        f"(it names 127.0.0.1); connect with --server 127.0.0.1:{tls_port}"
    )
    assert last_line(site, "plain-agent").startswith(
        f"error: TLS on one side only: the server at 127.0.0.1:{tls_port} speaks TLS and this "
        "agent runs with --insecure"
    )
    assert last_line(site, "tls-agent").startswith(
        f"error: TLS on one side only: the server at 127.0.0.1:{plain_port} speaks plain text"
    )
    assert last_line(site, "no-server").startswith("error: no server at 127.0.0.1:")
    for name in agents:
        assert_quiet(site, name)
    # The servers never saw a device: nothing in a TLS mismatch reaches them.
    assert "devices connected: 1/1" not in site.text("server") + site.text("plain-server")


@pytest.mark.timeout(600)
def test_refusals_an_agent_cannot_fix_exit_3_and_a_finished_run_is_not_resumed_silently(
    site: Site, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 10
    foreign = tmp_path / "ten-features.npz"
    np.savez(
        foreign,
        x_train=rng.random((300, 10), dtype=np.float32),
        y_train=labels,
        x_test=rng.random((50, 10), dtype=np.float32),
        y_test=labels[:50],
    )
    run("certs", "init", str(site.root / "elsewhere"), "--host", "127.0.0.1", cwd=site.root)
    wrong_key = other_certs(site, ca_from=site.certs, key_from=site.root / "elsewhere")
    server, port = site.server(*digits_server(1, 2, 2), "--deadline", "120")
    address = f"127.0.0.1:{port}"
    unfit = agent(site, "unfit", address, "--certs", str(site.certs), "--dataset", f"npz:{foreign}")
    other = agent(site, "wrong-key", address, "--certs", str(wrong_key), *digits_agent(1, 2))
    assert unfit.wait(timeout=400) == AgentExit.REFUSED, site.text("unfit")[-2000:]
    assert other.wait(timeout=400) == AgentExit.REFUSED, site.text("wrong-key")[-2000:]
    assert server.wait(timeout=200) == 0, site.text("server")[-3000:]

    fits = (  # the edge preset sends the model as one flat vector: its sizes are compared
        "this device's data does not fit the server's model: it has 17,226 parameters, and "
        "this device's data needs a model of 10,314"
    )
    assert last_line(site, "unfit") == (
        f"error: {fits}; start the agent with data of the server's dataset (the same features "
        "and classes)"
    )
    assert site.text("unfit").count("does not fit") == 2  # the round's line, then the exit's
    assert last_line(site, "wrong-key") == (
        "error: the server's models are not signed by this agent's model-signing key; copy "
        "model-signing.pub from the server's certs folder into --certs"
    )
    for name in ("unfit", "wrong-key"):
        assert_quiet(site, name)
    # The server got each device's reason, the right way round, and the round went on.
    (record,) = metrics(site)
    reasons = sorted(r["reason"] for r in record["rejections"])
    assert reasons == [
        "device reported an error: refused: the model's signature or hash does not verify",
        f"device reported an error: {fits}",
    ]

    # The same recipe again in the same folder: the finished run is reported, not resumed.
    again = subprocess.run(
        [
            *(STAMEN, "server", *digits_server(1, 2, 2), "--address", "127.0.0.1:0"),
            *("--certs", str(site.certs), "--registry", str(site.registry)),
            *("--state-dir", str(site.root / "server-state"), "--out", str(tmp_path / "again")),
        ],
        cwd=site.root,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = " ".join((again.stdout + again.stderr).split())
    assert again.returncode == 2, said
    assert "holds a finished run (1 of 1 rounds, saved" in said
    assert f"results in {site.root / 'results'}" in said
    assert "pass --resume to go on with it" in said and "--fresh to start a new run" in said
    assert "devices connected" not in said  # decided before serving anyone

    fresh, _ = site.server(*digits_server(1, 2, 2), "--fresh", name="fresh-server")
    note = wait_for(
        lambda: re.search(r"--fresh: moved it to (\S+)/,", site.text("fresh-server")), 60
    )
    kept = Path(note.group(1))
    assert (kept / "checkpoint.npz").exists()
    assert json.loads((kept / "run-ended.json").read_text())["ended"] == "finished"
    wait_for(lambda: "devices connected: 0/2" in site.text("fresh-server"), 60, fresh)
