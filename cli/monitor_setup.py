"""``--monitor-port``: serve the monitor (and metrics) beside a simulation or an edge server."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from stamen.config import StamenConfig
from stamen.core.errors import ConfigError
from stamen.server.monitor import MonitorSettings, Role, TokenStore, generate_token, load_tokens
from stamen.server.monitor.session import MonitoredRun

TOKEN_FILE = "monitor-token"
"""Where a generated operator token is written, inside the run's out dir."""
ADDRESS_FILE = "monitor.json"
"""The monitor's address, TLS flag and token file, for scripts."""


@dataclass(frozen=True)
class MonitorOptions:
    """The monitor flags of ``stamen simulate`` and ``stamen server``."""

    port: int
    metrics_port: int | None = None
    host: str = "127.0.0.1"
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--monitor-port must be in 0..65535; got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be in 0..65535; got {self.metrics_port}")


def monitor_options(
    port: int | None,
    metrics_port: int | None,
    host: str,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> MonitorOptions | None:
    """The monitor flags as options, or ``None`` without ``--monitor-port``."""
    if port is None:
        if metrics_port is not None:
            raise ConfigError("--metrics-port needs --monitor-port")
        return None
    if token_file is not None:
        load_tokens(token_file=token_file)  # a bad line fails now, not after the first round
    return MonitorOptions(port, metrics_port, host, token_file, tls_cert, tls_key)


def start_monitored_run(
    options: MonitorOptions, config: StamenConfig, out_dir: Path, console: Console
) -> MonitoredRun:
    """Start the monitor for a run; prints where it listens and which token to use."""
    tokens = load_tokens(token_file=options.token_file)
    token_note = ""
    token_path: Path | None = options.token_file
    if not tokens.operator_tokens() and not tokens.tokens:
        token = generate_token()
        tokens = TokenStore({token: Role.OPERATOR})
        out_dir.mkdir(parents=True, exist_ok=True)
        token_path = out_dir / TOKEN_FILE
        token_path.touch(mode=0o600, exist_ok=True)
        os.chmod(token_path, 0o600)
        token_path.write_text(f"operator {token}\n", encoding="utf-8")
        token_note = f" · operator token {token} (also in {token_path})"
    settings = MonitorSettings(
        host=options.host,
        port=options.port,
        tls_cert=options.tls_cert,
        tls_key=options.tls_key,
        tokens=tokens,
    )
    run = MonitoredRun(config, settings, metrics_port=options.metrics_port).start()
    address = run.server.address
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ADDRESS_FILE).write_text(
        json.dumps(
            {
                "address": address,
                "tls": settings.tls,
                "token_file": str(token_path) if token_path else None,
                "metrics_port": run.metrics.port if run.metrics else None,
            }
        )
        + "\n",
        encoding="utf-8",
    )
    tls = "TLS" if settings.tls else "no TLS"
    console.print(f"monitor: {address} ({tls}){token_note}", highlight=False, soft_wrap=True)
    console.print(
        f"  watch it: stamen console --server {address} --token-file {token_path}"
        if token_path
        else f"  watch it: stamen console --server {address} --token TOKEN",
        highlight=False,
        soft_wrap=True,
    )
    if run.metrics is not None:
        console.print(f"metrics: http://{options.host}:{run.metrics.port}/metrics", highlight=False)
    return run
