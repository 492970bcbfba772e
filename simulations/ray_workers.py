"""The simulation grid's workers as Ray actors, on a private Ray or across a Ray cluster.

The same scheduling as the forked pool (:mod:`stamen.simulations.pool`): every actor
receives a round's messages once (one object in Ray's store, fetched once per node), then
chunks of one training group with their devices' pickled states, each to whichever actor
runs short first. The actors train devices together as a forked worker does
(:meth:`~stamen.simulations.workers.DeviceRunner.run_all`); the server keeps every device's
state, so an actor holds nothing between chunks and the results do not depend on how many
actors there are or on which node each runs.

Each actor takes one CPU. Without ``federation.workers`` there is one actor per CPU of the
cluster, spread over its nodes. Actors are owned by this process: they end when the run
ends, however it ends (Ray ends an owner's actors when it disconnects).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from flwr.app import Message

from stamen.core.errors import ConfigError, StamenError
from stamen.simulations.device_states import DeviceStates
from stamen.simulations.pool import Chunk, DevicePool, Outcome
from stamen.simulations.worker_process import set_up_training
from stamen.simulations.workers import DeviceRunner, default_workers, run_chunk

LOG = logging.getLogger("stamen.simulations")

PRIVATE_OBJECT_STORE_BYTES = 256 * 2**20
"""Object store of a private Ray: a round's messages and a few chunks' replies in flight."""
ACTOR_START_SECONDS = 120.0
"""How long the actors may take to start (Ray starts a Python process for each)."""
WAIT_SECONDS = 0.5
"""Longest wait on Ray at a time, so that Ctrl-C and SIGTERM are seen promptly."""


class DeviceActor:
    """One Ray actor: runs chunks of a round's devices, as a forked worker does."""

    def __init__(self, runner: DeviceRunner) -> None:
        set_up_training()
        self.runner = runner
        self.messages: list[Message] = []

    def where(self) -> str:
        """The Ray node this actor runs on: its host and node id."""
        import ray

        return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"

    def start_round(self, pickled: bytes) -> None:
        """Take the round's messages (pickled once by the server, for every actor)."""
        self.messages = pickle.loads(pickled)

    def run_chunk(self, chunk: Chunk) -> bytes:
        """Run one chunk; its outcomes, pickled together."""
        outcomes = list(run_chunk(self.runner, self.messages, chunk))
        return pickle.dumps(outcomes, pickle.HIGHEST_PROTOCOL)


class RayWorkerPool(DevicePool):
    """Ray actors that share out each round's devices.

    Args:
        runner: what each actor runs (pickled once, and sent to every actor).
        workers: actors; 0: one per CPU of the cluster.
        states: where the devices' states wait between their tasks.
        address: the Ray cluster to join (``host:port`` or ``auto``); empty: start a
            private Ray on this machine with one CPU per core.
        log_to_driver: show the actors' own output here.
    """

    def __init__(
        self,
        runner: DeviceRunner,
        workers: int = 0,
        states: DeviceStates | None = None,
        *,
        address: str = "",
        log_to_driver: bool = False,
    ) -> None:
        super().__init__(runner.device_batch, states)
        ray = _import_ray()
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            connect(address, log_to_driver=log_to_driver, cpus=workers)
        try:
            cpus = int(ray.cluster_resources().get("CPU", 0))
            count = workers or max(1, cpus)
            if count > cpus:
                raise ConfigError(
                    f"{count} Ray actors of one CPU each need {count} CPUs, and the Ray "
                    f"cluster has {cpus}: lower --workers, or add nodes"
                )
            actor_class = ray.remote(num_cpus=1, max_restarts=0)(DeviceActor)
            runner_ref = ray.put(runner)
            self.actors = [
                actor_class.options(scheduling_strategy="SPREAD").remote(runner_ref)
                for _ in range(count)
            ]
            self.locations = self._wait_until_started()
        except BaseException:
            self._stop(kill=True)
            raise
        self._pending: dict[Any, int] = {}
        """Each chunk in flight, to the actor running it."""
        self._starting: dict[Any, int] = {}
        """Each round start not yet confirmed, to its actor: an actor that gets no chunk
        (a round smaller than the pool) is still found dead through these."""
        self._signals = _SignalsThroughRay()
        LOG.info("%d Ray actors on nodes %s", self.size, ", ".join(sorted(set(self.locations))))

    @property
    def size(self) -> int:
        """How many actors the pool has."""
        return len(self.actors)

    def _start_round(self, messages: Sequence[Message]) -> None:
        pickled = self._ray.put(pickle.dumps(list(messages), pickle.HIGHEST_PROTOCOL))
        for worker, actor in enumerate(self.actors):
            # An actor runs its calls in the order sent: the chunks wait for this.
            self._starting[actor.start_round.remote(pickled)] = worker

    def _send_chunk(self, worker: int, chunk: Chunk) -> None:
        self._pending[self.actors[worker].run_chunk.remote(chunk)] = worker

    def _outcomes(self, busy: list[int]) -> Iterator[tuple[int, Outcome]]:
        ready: list[Any] = []
        while not ready:
            with self._signals:
                waiting = [*self._pending, *self._starting]
                ready, _ = self._ray.wait(waiting, num_returns=1, timeout=WAIT_SECONDS)
        for ref in ready:
            if ref in self._starting:
                self._result(ref, self._starting.pop(ref))
                continue
            worker = self._pending.pop(ref)
            outcomes: list[Outcome] = pickle.loads(self._result(ref, worker))
            for outcome in outcomes:
                yield worker, outcome

    def _result(self, ref: Any, worker: int) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayError as error:
            raise StamenError(
                f"simulation worker {worker} (a Ray actor on {self.locations[worker]}) died "
                f"({type(error).__name__}); the run stops here"
            ) from None

    def _wait_until_started(self) -> list[str]:
        refs = [actor.where.remote() for actor in self.actors]
        ready, waiting = self._ray.wait(refs, num_returns=len(refs), timeout=ACTOR_START_SECONDS)
        if waiting:
            raise StamenError(
                f"only {len(ready)} of {len(refs)} Ray actors started within "
                f"{ACTOR_START_SECONDS:.0f} s; does the cluster have {len(refs)} free CPUs?"
            )
        hosts: list[str] = self._ray.get(refs)
        return hosts

    def _stop(self, *, kill: bool) -> None:
        if hasattr(self, "_signals"):
            self._signals.restore()
        for actor in getattr(self, "actors", []):
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)
        self.actors = []
        self._pending = {}
        self._starting = {}
        if self._owns_ray:
            self._owns_ray = False
            self._ray.shutdown()


class _SignalsThroughRay:
    """Keeps what SIGTERM's handler raised while Ray waited.

    Ray checks for signals while it waits and turns whatever a handler raised into a plain
    ``KeyboardInterrupt``; SIGTERM's handler raises :class:`~stamen.core.Terminated`, which
    the run needs to say which signal stopped it. Used around each wait on Ray.
    """

    def __init__(self) -> None:
        self.raised: list[BaseException] = []
        self.previous: Any = None
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return
        self.previous = previous

        def noting(signum: int, frame: Any) -> None:
            try:
                previous(signum, frame)
            except BaseException as error:
                self.raised.append(error)
                raise

        signal.signal(signal.SIGTERM, noting)

    def __enter__(self) -> None:
        return None

    def __exit__(self, error_type: type[BaseException] | None, *rest: object) -> None:
        if error_type is not None and issubclass(error_type, KeyboardInterrupt) and self.raised:
            raise self.raised.pop() from None

    def restore(self) -> None:
        """Put SIGTERM's handler back as it was."""
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None


def connect(address: str, *, log_to_driver: bool, cpus: int = 0) -> None:
    """Start a private Ray (``address`` empty) with ``cpus`` CPUs (0: one per core), or
    join the cluster at ``address``.

    Ray's ``init`` installs its own SIGTERM handler, which exits at once; the handler
    before it is put back, so that SIGTERM stops the run as Ctrl-C does and the results
    so far are written.
    """
    ray = _import_ray()
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": log_to_driver,
        # Ray's own start-up lines are for --verbose, as the actors' output is.
        "logging_level": logging.INFO if log_to_driver else logging.WARNING,
    }
    if address:
        init_args["address"] = address
    else:
        init_args.update(
            num_cpus=cpus or default_workers(), object_store_memory=PRIVATE_OBJECT_STORE_BYTES
        )
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    try:
        ray.init(**init_args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "backend 'ray' needs the simulation extra: pip install 'stamen[simulation]'"
        ) from None
    return ray
