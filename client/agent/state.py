"""The agent's state on disk: its key, error-feedback residual and last model.

It also keeps the residual from before its last training task, so that when a
restarted server sends that task again (the round was never checkpointed) the
device trains it again from the same starting point.

Every file is written atomically (temp file, fsync, rename), so a device that
loses power mid-write keeps the previous state whole.

Examples:
    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> store = AgentStateStore(Path(tempfile.mkdtemp()))
    >>> store.save(AgentState(round=3, residual={"w": np.zeros(2, np.float32)}, model=b"m"))
    >>> loaded = store.load()
    >>> loaded.round, loaded.model, loaded.residual["w"].shape
    (3, b'm', (2,))
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stamen.contract.edge import (
    generate_key,
    load_private_key,
    save_private_key,
    save_public_key,
)
from stamen.core import write_atomic
from stamen.core.errors import ConfigError

KEY_FILE = "device.key"
PUBLIC_KEY_FILE = "device.pub"
STATE_FILE = "state.npz"
_META = "__meta__"
_MODEL = "__model__"
_RESIDUAL = "residual/"
_RESIDUAL_BEFORE = "residual-before/"


@dataclass
class AgentState:
    """What the agent keeps between rounds and restarts."""

    round: int = 0
    """The last round this device trained in."""
    residual: dict[str, np.ndarray] = field(default_factory=dict)
    """The uplink codec's error-feedback residual."""
    model: bytes = b""
    """The last global model received: the model the device keeps, so that the server can
    send the next one as a delta to it (an exact whole-model payload), or, from a server
    that does not send deltas, the payload as it was sent."""
    trained: bytes = b""
    """The content hash of the last training task, to recognise it if the server sends it again."""
    residual_before: dict[str, np.ndarray] = field(default_factory=dict)
    """The residual as it was before that training, to replay a round the server lost."""


class AgentStateStore:
    """A directory with the device key and ``state.npz``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def key_path(self) -> Path:
        """The device's private key."""
        return self.directory / KEY_FILE

    @property
    def public_key_path(self) -> Path:
        """The device's public key, to register on the server."""
        return self.directory / PUBLIC_KEY_FILE

    def create_key(self, *, overwrite: bool = False) -> Ed25519PrivateKey:
        """Generate and store a new device key pair."""
        if self.key_path.exists() and not overwrite:
            raise ConfigError(f"{self.key_path} exists; pass --force to replace this device's key")
        key = generate_key()
        save_private_key(key, self.key_path)
        save_public_key(key.public_key(), self.public_key_path)
        return key

    def load_key(self) -> Ed25519PrivateKey:
        """The device's private key, with a hint when it was never made."""
        if not self.key_path.exists():
            raise ConfigError(
                f"no device key at {self.key_path}; "
                f"create one with: stamen agent keygen --state-dir {self.directory}"
            )
        return load_private_key(self.key_path)

    def save(self, state: AgentState) -> None:
        """Replace the stored state, atomically."""
        arrays = {_RESIDUAL + k: v for k, v in state.residual.items()}
        arrays.update({_RESIDUAL_BEFORE + k: v for k, v in state.residual_before.items()})
        arrays[_MODEL] = np.frombuffer(state.model, dtype=np.uint8)
        meta = {"round": state.round, "trained": state.trained.hex()}
        arrays[_META] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **arrays)
        write_atomic(self.directory / STATE_FILE, buffer.getvalue(), mode=0o600)

    def load(self) -> AgentState:
        """The stored state; a fresh one when there is none or it cannot be read."""
        path = self.directory / STATE_FILE
        if not path.exists():
            return AgentState()
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data[_META]).decode())
                return AgentState(
                    round=int(meta["round"]),
                    residual=_prefixed(data, _RESIDUAL),
                    model=bytes(data[_MODEL]),
                    trained=bytes.fromhex(meta.get("trained", "")),
                    residual_before=_prefixed(data, _RESIDUAL_BEFORE),
                )
        except (OSError, ValueError, KeyError):
            return AgentState()


def _prefixed(data: np.lib.npyio.NpzFile, prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}
