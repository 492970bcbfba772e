"""One process of emulated edge agents for ``edge_load.py``: many devices on one event loop.

Each emulated agent has its own Ed25519 key and its own TLS channel (a local
subchannel pool per channel, so one connection each), and speaks the real
``stamen.edge.v1`` protocol as ``stamen agent`` does: Join and Authenticate
with its key, the task stream, heartbeats at the period the server asks for,
and for each task the model's signature and hash checked, then a signed,
chunked upload. Only training is replaced: the reply is a cheap but valid
update (small random deltas of the received model's shapes, encoded by the
real uplink codec against the received model's hash, made once per distinct
task content in this process), so that thousands of devices fit on two cores.
When the server says the run has ended (a signed notice), the agent stops.

Writes what it saw to ``--out`` (JSON): per round, the slowest and mean
compute time of its devices, and counts of uploads, refusals and notices.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from grpc import aio

from stamen.compression import UplinkCodec
from stamen.compression.downlink import DecodedModel, decode_model
from stamen.contract import (
    CONFIG_KEY,
    METRICS_KEY,
    MODEL_KEY,
    NUM_EXAMPLES,
    PAYLOAD,
    UPDATE_KEY,
    TrainTask,
    payload_bytes,
)
from stamen.contract.edge import (
    PROTOCOL_VERSION,
    challenge_message,
    device_id,
    edge_error_of,
    parse_records,
    public_bytes,
    run_ended_signing_bytes,
    serialize_records,
    sha256,
    task_signing_bytes,
    upload_chunks,
    verify_signature,
)
from stamen.core.errors import InvalidUpdate
from stamen.models import ModelSpec, build_model, exchanged_state
from stamen.protos.edge.v1 import edge_pb2, edge_pb2_grpc

RETRIED = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
"""Join failures a device retries (with backoff and jitter), as ``stamen agent`` would."""
MODELS_KEPT = 64
"""Global models the process keeps (as bases for the deltas its devices receive), and
updates (one per distinct task content). A device sampled in round 1 and next in round 7
gets a delta against round 1's model, so a round's tasks carry up to as many distinct
contents as rounds have passed; this must exceed a run's rounds (each of the benchmark's
MLP models is a few KB)."""


class Fleet:
    """The devices of this process and what they saw."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.address = args.address
        self.model_key = bytes.fromhex(Path(args.model_key).read_text().strip())
        self.credentials = grpc.ssl_channel_credentials(Path(args.ca).read_bytes())
        spec = ModelSpec(name=args.model, input_shape=(args.features,), num_classes=args.classes)
        self.shapes = {n: tuple(t.shape) for n, t in exchanged_state(build_model(spec)).items()}
        self.counts: Counter[str] = Counter()
        self.compute: dict[str, list[float]] = {}
        self.ended: Counter[str] = Counter()
        self.updates: dict[bytes, bytes] = {}
        self.models: dict[str, DecodedModel] = {}
        """The last models decoded, by hash: the server sends a device that kept one the
        change since it (a downlink delta), which only that model decodes."""

    async def device(self, key: Ed25519PrivateKey, index: int) -> None:
        channel = aio.secure_channel(
            self.address,
            self.credentials,
            options=[("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)],
        )
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        rng = np.random.default_rng(index)
        phase = "join"
        try:
            session = await self.join(stub, key)
            phase = "task stream"
            beating = asyncio.create_task(self.heartbeats(stub, session))
            try:
                await self.serve(stub, key, session, rng)
            finally:
                beating.cancel()
        except grpc.RpcError as error:
            self.note(f"failed {error.code().name} ({phase})", error.details())
        except Exception as error:  # an emulator bug must show, not end a device quietly
            self.note(f"crashed {type(error).__name__}", str(error))
        finally:
            await channel.close()

    def note(self, kind: str, detail: str | None) -> None:
        """Count a failure; say the first few of each kind."""
        self.counts[kind] += 1
        if self.counts[kind] <= 3:
            print(f"{kind}: {detail}", file=sys.stderr, flush=True)

    async def join(self, stub: Any, key: Ed25519PrivateKey) -> edge_pb2.Session:
        public = public_bytes(key.public_key())
        ident = device_id(public)
        delay = 0.5
        while True:
            try:
                challenge = await stub.Join(
                    edge_pb2.JoinRequest(
                        protocol_version=PROTOCOL_VERSION, device_id=ident, public_key=public
                    ),
                    timeout=60,
                )
                session: edge_pb2.Session = await stub.Authenticate(
                    edge_pb2.AuthenticateRequest(
                        challenge_id=challenge.challenge_id,
                        device_id=ident,
                        signature=key.sign(challenge_message(challenge.nonce, ident)),
                    ),
                    timeout=60,
                )
                self.counts["joined"] += 1
                return session
            except grpc.RpcError as error:
                typed = edge_error_of(error)
                expired = typed is not None and "unknown or expired" in str(typed)
                if error.code() not in RETRIED and not expired:
                    raise
                self.note(f"join retried {error.code().name}", error.details())
                wait = max(typed.retry_after if typed else 0.0, random.uniform(0, delay))
                delay = min(delay * 2, 30.0)
                await asyncio.sleep(wait)

    async def heartbeats(self, stub: Any, session: edge_pb2.Session) -> None:
        period = session.heartbeat_seconds
        while True:
            await asyncio.sleep(period)
            try:
                reply = await stub.Heartbeat(
                    edge_pb2.HeartbeatRequest(session=session.token), timeout=30
                )
                period = reply.heartbeat_seconds or period
                self.counts["heartbeats"] += 1
            except grpc.RpcError as error:
                self.counts[f"heartbeat {error.code().name}"] += 1

    async def serve(
        self, stub: Any, key: Ed25519PrivateKey, session: edge_pb2.Session, rng: Any
    ) -> None:
        node = session.node_id
        async for task in stub.Tasks(edge_pb2.TaskStreamRequest(session=session.token)):
            if task.HasField("run_ended"):
                signed = run_ended_signing_bytes(task, node, session.token)
                genuine = verify_signature(self.model_key, task.run_ended.signature, signed)
                self.ended["genuine" if genuine else "forged"] += 1
                return
            if sha256(task.content) != task.content_sha256 or not verify_signature(
                self.model_key, task.signature, task_signing_bytes(task, node)
            ):
                self.counts["tasks refused"] += 1
                continue
            started = time.perf_counter()
            data = self.update_for(task, rng)
            self.compute.setdefault(task.group_id, []).append(time.perf_counter() - started)
            await self.upload(stub, key, session, task, data)
        self.note("stream ended without a notice", None)

    def update_for(self, task: edge_pb2.Task, rng: Any) -> bytes:
        """This device's reply: the devices of this process that received the same task
        content send the same cheap update, so the emulator spends its two cores on the
        protocol (verify, sign, upload), not on making thousands of identical updates."""
        key = bytes(task.content_sha256)
        update = self.updates.get(key)
        if update is None:
            update = self.updates[key] = self.cheap_update(task, rng)
            while len(self.updates) > MODELS_KEPT:
                del self.updates[next(iter(self.updates))]
        return update

    def cheap_update(self, task: edge_pb2.Task, rng: Any) -> bytes:
        """A valid update of the received model, without training: small random deltas."""
        content = parse_records(task.content)
        train = TrainTask.from_config_record(content.config_records[CONFIG_KEY])
        decoded = self.decoded(payload_bytes(content.array_records[MODEL_KEY][PAYLOAD]))
        delta = {
            name: rng.normal(0.0, 1e-3, base.shape).astype(np.float32)
            * decoded.masks.get(name, 1.0)
            for name, base in decoded.tensors.items()
        }
        encoded = UplinkCodec(train.uplink).encode(
            delta,
            round_num=train.round_num,
            base_model_hash=decoded.model_hash,
            residual=None,
            rng=rng,
        )
        reply = RecordDict(
            {
                UPDATE_KEY: ArrayRecord({PAYLOAD: Array(np.frombuffer(encoded.payload, np.uint8))}),
                METRICS_KEY: MetricRecord({NUM_EXAMPLES: 10, "train-loss": 1.0}),
            }
        )
        return serialize_records(reply)

    def decoded(self, payload: bytes) -> DecodedModel:
        for base in [None, *reversed(self.models.values())]:
            try:
                decoded = decode_model(payload, expected_shapes=self.shapes, base=base)
            except InvalidUpdate:
                continue
            self.models[decoded.model_hash] = decoded
            while len(self.models) > MODELS_KEPT:
                del self.models[next(iter(self.models))]
            return decoded
        raise InvalidUpdate("a delta against no model this emulator kept")

    async def upload(
        self,
        stub: Any,
        key: Ed25519PrivateKey,
        session: edge_pb2.Session,
        task: edge_pb2.Task,
        data: bytes,
    ) -> None:
        chunk_bytes = session.chunk_bytes or 256 * 1024
        pieces = list(upload_chunks(key, session.token, task, data, chunk_bytes))
        try:
            if len(pieces) == 1:  # as ``stamen agent`` sends an upload that fits one chunk
                await stub.UploadWhole(pieces[0], timeout=120)
            else:
                await stub.Upload(iter(pieces), timeout=120)
            self.counts["uploads accepted"] += 1
        except grpc.RpcError as error:
            typed = edge_error_of(error)
            self.counts[f"uploads refused {typed.code_name if typed else error.code().name}"] += 1

    def report(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "run_ended": dict(self.ended),
            "compute": {
                group: {"max": max(values), "mean": sum(values) / len(values), "n": len(values)}
                for group, values in self.compute.items()
            },
        }


async def main(args: argparse.Namespace) -> None:
    fleet = Fleet(args)
    raw = Path(args.keys).read_bytes()
    keys = [Ed25519PrivateKey.from_private_bytes(raw[i : i + 32]) for i in range(0, len(raw), 32)]
    devices = []
    for index, key in enumerate(keys):
        devices.append(asyncio.create_task(fleet.device(key, args.first_index + index)))
        await asyncio.sleep(1.0 / args.ramp)  # connect gradually, as a fleet comes online
    out = Path(args.out)

    def save() -> None:
        out.write_text(json.dumps(fleet.report(), indent=1) + "\n")

    def stop() -> None:
        save()
        sys.exit(1)

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    done = asyncio.gather(*devices)
    try:
        await asyncio.wait_for(done, timeout=args.timeout)
    except TimeoutError:
        fleet.counts["devices still running at the timeout"] = sum(not d.done() for d in devices)
    save()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--model-key", required=True, help="file: the model-signing key, hex")
    parser.add_argument("--keys", required=True, help="file: raw 32-byte Ed25519 private keys")
    parser.add_argument("--first-index", type=int, default=0)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--ramp", type=float, default=100.0, help="devices connected per second")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", required=True)
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
