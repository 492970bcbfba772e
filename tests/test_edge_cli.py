"""The edge commands as a user meets them: help, and one clear line for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from stamen.cli.main import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, " ".join(result.output.split())


def test_help_lists_the_edge_commands() -> None:
    code, output = invoke("--help")
    assert code == 0
    for command in ("server", "agent", "certs", "devices"):
        assert command in output
    code, output = invoke("agent", "--help")
    assert code == 0 and "--server" in output and "--min-battery" in output and "keygen" in output


def test_keygen_register_list_revoke(tmp_path: Path) -> None:
    registry = str(tmp_path / "devices.json")
    code, output = invoke("agent", "keygen", "--state-dir", str(tmp_path / "a"))
    assert code == 0 and "stamen devices register" in output
    pub = str(tmp_path / "a" / "device.pub")
    assert invoke("devices", "register", pub, "--name", "pi", "--registry", registry)[0] == 0
    assert "registered" in invoke("devices", "list", "--registry", registry)[1]
    assert invoke("devices", "revoke", "pi", "--registry", registry)[0] == 0
    assert "revoked" in invoke("devices", "list", "--registry", registry)[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agent"], "--server HOST:PORT is required"),
        (["agent", "--server", "nowhere", "--certs", "{tmp}/certs"], "--server must be HOST:PORT"),
        (
            ["agent", "--server", "h:1", "--certs", "{tmp}/certs", "--state-dir", "{tmp}/x"],
            "no device key at {tmp}/x/device.key",
        ),
        (
            ["agent", "--server", "h:1", "--certs", "{tmp}/none"],
            "public key file not found: {tmp}/none/model-signing.pub",
        ),
        (["devices", "register", "{tmp}/missing.pub"], "public key file not found"),
        (["devices", "revoke", "ghost", "--registry", "{tmp}/d.json"], "no device in"),
        (["server", "--certs", "{tmp}/none", "--address", "127.0.0.1:0"], "stamen certs init"),
        (
            ["server", "--over-selection", "-1"],
            "federation.over_selection must be between 0 and 10",
        ),
        (["server", "--set", "federation.rounds=0"], "federation.rounds must be >= 1"),
        (["certs", "init", "{tmp}/certs"], "pass --force to replace"),
        (["server", "--session-ttl", "0", "--address", "127.0.0.1:0"], "edge session TTL must be"),
    ],
)
def test_edge_mistakes_are_one_line_without_traceback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    assert invoke("certs", "init", str(tmp_path / "certs"), "--host", "127.0.0.1")[0] == 0
    code, output = invoke(*[a.format(tmp=tmp_path) for a in args])
    assert code == 2, output
    assert message.format(tmp=tmp_path) in output
    assert "Traceback" not in output


def test_insecure_says_what_is_and_is_not_protected_and_the_monitor_stays_on_loopback(
    tmp_path: Path,
) -> None:
    code, output = invoke(
        "server", "--insecure", "--monitor-port", "7777", "--certs", str(tmp_path / "none"),
        "--session-ttl", "900", "--address", "127.0.0.1:0",
    )  # fmt: skip
    assert code == 2 and "stamen certs init" in output  # it warns before it needs the certs
    for said in (
        "anyone on the path can read the models, the updates and the session tokens",
        "until the session expires (at most 900 s)",
        "a stolen token cannot upload or forge an update",
        "every model is signed by this server",
        "The monitor on 127.0.0.1:7777 is plain text too",
        "it is on loopback",
    ):
        assert said in output, said
    code, output = invoke(
        "server", "--insecure", "--monitor-port", "7777", "--monitor-host", "0.0.0.0",
        "--certs", str(tmp_path / "none"), "--address", "127.0.0.1:0",
    )  # fmt: skip
    assert "The monitor on 0.0.0.0:7777" in output and "reachable beyond this machine" in output
    code, output = invoke("agent", "--insecure", "--server", "h:1", "--certs", str(tmp_path))
    assert "signs every upload with this device's key" in output
    assert "only on models signed by the server" in output
