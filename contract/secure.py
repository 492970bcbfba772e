"""Secure aggregation's half of the device–server contract: message types and record keys.

One federated round under secure aggregation is four exchanges, each a Flower message
type that the Stamen ``ClientApp`` handles (``stamen.client.secure_aggregation``) and
every grid forwards unchanged:

1. :data:`ADVERTISE`: the device makes this round's keys and answers with their public halves;
2. :data:`SHARE`: given its neighbours' keys, it answers with its Shamir shares, sealed for them;
3. :data:`UPLOAD`: given the model, the round's public quantization and the shares sealed
   for it, it trains and answers with its masked, bit-packed vector;
4. :data:`UNMASK`: given who uploaded, it answers with the shares that remove the masks.

Every field travels in one ``ConfigRecord`` under :data:`SECAGG_KEY`; the masked vector
travels as a uint8 ``Array`` under the usual update key.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord

ADVERTISE = "query.secagg_advertise"
SHARE = "query.secagg_share"
UPLOAD = "train.secagg"
UNMASK = "query.secagg_unmask"
SECURE_MESSAGE_TYPES = (ADVERTISE, SHARE, UPLOAD, UNMASK)

SECAGG_KEY = "stamen.secagg"
"""The ``ConfigRecord`` of every secure-aggregation message, both ways."""
SECAGG_STATE_KEY = "stamen.secagg.state"
"""The device's own round secrets and the shares it holds, in its ``Context.state``."""


@dataclass(frozen=True)
class UploadParams:
    """What every device of a round is told for its masked upload: all of it public.

    Attributes:
        round_num: the round.
        bits: the modulus is ``2**bits``.
        ratio: the share of unpruned coordinates sent (``stamen.privacy.round_coordinates``).
        run_seed: seeds the round's coordinates, with the round.
        step: the value of one integer unit.
        coordinate_bound: each value is clipped to this before rounding.
        clip: the L2 clip (0: none).
        norm_bound: the rounded vector's L2 bound (conditional rounding).
        noise_variance: Skellam variance each device adds per coordinate (0: none).
        coordinates: the server's bitmap of the round's coordinates (empty: the seeded
            random subset of ``ratio``).
    """

    round_num: int
    bits: int
    ratio: float
    run_seed: int
    step: float
    coordinate_bound: float
    clip: float
    norm_bound: float
    noise_variance: float
    coordinates: bytes = b""

    def to_config_record(self) -> ConfigRecord:
        """The fields under their own names."""
        return ConfigRecord(
            {
                "round": self.round_num,
                "bits": self.bits,
                "ratio": self.ratio,
                "run-seed": self.run_seed,
                "step": self.step,
                "coordinate-bound": self.coordinate_bound,
                "clip": self.clip,
                "norm-bound": self.norm_bound,
                "noise-variance": self.noise_variance,
                "coordinates": self.coordinates,
            }
        )

    @classmethod
    def from_config_record(cls, record: ConfigRecord) -> UploadParams:
        """Parse and check the fields; a ``ValueError`` names what is wrong."""
        try:
            params = cls(
                round_num=int(record["round"]),  # type: ignore[arg-type]
                bits=int(record["bits"]),  # type: ignore[arg-type]
                ratio=float(record["ratio"]),  # type: ignore[arg-type]
                run_seed=int(record["run-seed"]),  # type: ignore[arg-type]
                step=float(record["step"]),  # type: ignore[arg-type]
                coordinate_bound=float(record["coordinate-bound"]),  # type: ignore[arg-type]
                clip=float(record["clip"]),  # type: ignore[arg-type]
                norm_bound=float(record["norm-bound"]),  # type: ignore[arg-type]
                noise_variance=float(record["noise-variance"]),  # type: ignore[arg-type]
                coordinates=bytes(record.get("coordinates", b"")),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed secure-aggregation parameters: {error!r}") from None
        if not (2 <= params.bits <= 32 and 0 < params.ratio <= 1 and params.step > 0):
            raise ValueError("secure-aggregation parameters out of range")
        if params.coordinate_bound <= 0 or params.noise_variance < 0 or params.clip < 0:
            raise ValueError("secure-aggregation parameters out of range")
        return params
