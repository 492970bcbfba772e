"""Join flood: how fast one address can send ``Join``, and what it costs the server's memory.

Starts a real ``stamen server`` (TLS, waiting for devices, so nothing else
moves its memory) and floods it from this process over ``--workers`` TLS
connections on 127.0.0.1, as fast as they go: half made-up keys, half the
public keys of two registered devices. It samples the server's resident
memory (psutil) every ``--every`` requests, and at each sample times one
``Join`` by a registered device on the same address. Writes ``results.json``.

    python benchmarks/edge_join_flood.py --requests 40000 --out runs/join-flood
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

STAMEN = str(Path(sys.executable).parent / "stamen")


def sh(*args: str, cwd: Path) -> None:
    """Run a short ``stamen`` command, failing loudly."""
    subprocess.run([STAMEN, *args], cwd=cwd, check=True, capture_output=True, timeout=120)


def run_flood(requests: int, workers: int, every: int, out: Path) -> dict[str, Any]:
    """Flood a waiting server; returns the figures."""
    import grpc
    import psutil

    from stamen.client.agent import AgentStateStore, EdgeConnection, open_channel
    from stamen.contract.edge import PROTOCOL_VERSION, device_id, edge_error_of, public_bytes
    from stamen.contract.edge import generate_key as new_key
    from stamen.protos.edge.v1 import edge_pb2

    out.mkdir(parents=True, exist_ok=True)
    sh("certs", "init", str(out / "certs"), "--host", "127.0.0.1", "--force", cwd=out)
    keys = {}
    for name in ("probe", "attacker", "bystander"):
        store = AgentStateStore(out / "agents" / name)
        keys[name] = store.create_key(overwrite=True)
        registry = ["--registry", str(out / "devices.json")]
        sh("devices", "register", str(store.public_key_path), "--name", name, *registry, cwd=out)
    log = (out / "server.log").open("wb")
    server = subprocess.Popen(
        [STAMEN, "server", "--address", "127.0.0.1:0", "--certs", str(out / "certs"),
         "--registry", str(out / "devices.json"), "--state-dir", str(out / "state"),
         "--out", str(out / "results"), "--dataset", "digits", "--model", "mlp",
         "--rounds", "1", "--devices-per-round", "1", "--wait", "3600"],
        cwd=out, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        port = 0
        for _ in range(600):
            found = re.search(r"on port (\d+)", (out / "server.log").read_text(errors="replace"))
            if found:
                port = int(found.group(1))
                break
            time.sleep(0.1)
        address, ca = f"127.0.0.1:{port}", out / "certs" / "ca.pem"
        registered = [public_bytes(keys[n].public_key()) for n in ("attacker", "bystander")]
        process = psutil.Process(server.pid)
        outcomes: dict[str, int] = {}
        sent = [0]
        lock = threading.Lock()

        def flood(worker: int) -> None:
            channel = open_channel(address, ca)
            stub = EdgeConnection(channel, new_key()).stub
            for index in range(worker, requests, workers):
                key = (
                    registered[index % 4 // 2]
                    if index % 2
                    else public_bytes(new_key().public_key())
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

        probe = EdgeConnection(open_channel(address, ca), keys["probe"])
        samples = [{"requests": 0, "rss_mb": process.memory_info().rss / 2**20}]
        threads = [threading.Thread(target=flood, args=(w,), daemon=True) for w in range(workers)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            if sent[0] >= samples[-1]["requests"] + every:
                began = time.perf_counter()
                probe.join()  # a registered device on the flooded address
                samples.append(
                    {
                        "requests": sent[0],
                        "rss_mb": round(process.memory_info().rss / 2**20, 1),
                        "probe_join_ms": round(1000 * (time.perf_counter() - began), 1),
                    }
                )
            time.sleep(0.05)
        seconds = time.monotonic() - started
        probe.close()
        samples.append({"requests": sent[0], "rss_mb": process.memory_info().rss / 2**20})
    finally:
        server.terminate()
        server.wait(timeout=30)
    figures = {
        "requests": sent[0],
        "workers": workers,
        "seconds": round(seconds, 1),
        "rate_per_s": round(sent[0] / seconds),
        "outcomes": outcomes,
        "rss_growth_mb": round(samples[-1]["rss_mb"] - samples[0]["rss_mb"], 1),
        "samples": samples,
    }
    (out / "results.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--every", type=int, default=5_000, help="sample memory this often")
    parser.add_argument("--out", type=Path, default=Path("runs/join-flood"))
    args = parser.parse_args()
    figures = run_flood(args.requests, args.workers, args.every, args.out)
    print(json.dumps({k: v for k, v in figures.items() if k != "samples"}, indent=2))
    for sample in figures["samples"]:
        print(sample)


if __name__ == "__main__":
    main()
