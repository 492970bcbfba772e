"""A Prometheus endpoint for a federation, read from the monitor's state at each scrape.

Examples:
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> registry = CollectorRegistry()
    >>> registry.register(StateCollector(MonitorState()))
    >>> b"stamen_round 0.0" in generate_latest(registry)
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from stamen.core.errors import ConfigError
from stamen.server.control import RunState
from stamen.server.monitor.state import MonitorState


class StateCollector(Collector):
    """Turns a :class:`MonitorState` into Prometheus metrics."""

    def __init__(self, state: MonitorState) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        """Yield the current values."""
        status = self.state.status()
        yield _gauge("stamen_round", "The latest round started.", status.round)
        yield _gauge(
            "stamen_total_rounds", "Rounds the run is configured for.", status.total_rounds
        )
        yield _gauge(
            "stamen_devices_per_round", "Devices sampled per round.", status.devices_per_round
        )
        if status.HasField("accuracy"):
            yield _gauge(
                "stamen_accuracy", "Central test accuracy after the last round.", status.accuracy
            )
            yield _gauge("stamen_loss", "Central test loss after the last round.", status.loss)
        record = self.state.last_record
        if record is not None:
            yield _gauge(
                "stamen_round_duration_seconds", "Wall time of the last round.", record.seconds
            )
            if "epsilon" in record.extra:  # a DP run: the privacy spent so far
                yield _gauge(
                    "stamen_dp_epsilon",
                    f"Epsilon spent so far, at delta {record.extra.get('dp_delta')}.",
                    record.extra["epsilon"],
                )
        uplink = CounterMetricFamily("stamen_uplink_bytes", "Update bytes received from devices.")
        uplink.add_metric([], status.uplink_bytes)
        yield uplink
        downlink = CounterMetricFamily("stamen_downlink_bytes", "Model bytes sent to devices.")
        downlink.add_metric([], status.downlink_bytes)
        yield downlink
        rejected = CounterMetricFamily("stamen_rejected_updates", "Updates the server rejected.")
        rejected.add_metric([], status.rejected_updates)
        yield rejected
        for name, value, text in (
            ("stamen_stragglers", status.stragglers, "Devices that answered after the deadline."),
            ("stamen_dropouts", status.dropouts, "Devices that went away during a round."),
        ):
            counter = CounterMetricFamily(name, text)
            counter.add_metric([], value)
            yield counter
        current = self.state.state
        states = GaugeMetricFamily("stamen_run_state", "1 for the run's state.", labels=["state"])
        for state in RunState:
            states.add_metric([state.value], 1.0 if state is current else 0.0)
        yield states


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


class MetricsServer:
    """A running Prometheus HTTP endpoint (``/metrics``)."""

    def __init__(self, server: Any, port: int) -> None:
        self.server = server
        self.port = port

    def stop(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()


def start_metrics(state: MonitorState, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``state`` as Prometheus metrics at ``http://host:port/metrics``."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"metrics port must be in 0..65535; got {port}")
    registry = CollectorRegistry()
    registry.register(StateCollector(state))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise ConfigError(f"metrics endpoint cannot listen on {host}:{port}: {error}") from None
    return MetricsServer(server, int(server.server_address[1]))
