"""Secure aggregation and differential privacy maths, apart from any runtime.

Masks, Shamir shares and key agreement (:mod:`~stamen.privacy.masking`), the
neighbour graph (:mod:`~stamen.privacy.graph`), the round's coordinates
(:mod:`~stamen.privacy.coordinates`), quantization into the modulus
(:mod:`~stamen.privacy.modular`), Skellam noise (:mod:`~stamen.privacy.skellam`) and
the accountant (:mod:`~stamen.privacy.accounting`). The protocol that drives them
over a Grid lives in ``stamen.transport.secure_aggregation`` (server) and
``stamen.client.secure_aggregation`` (device); docs/privacy.md states the threat model.
"""

from stamen.privacy.accounting import (
    DpMechanism,
    PrivacyLedger,
    calibrate_noise,
    epsilon_of,
    poisson_subsampled_rdp,
    round_rdp,
)
from stamen.privacy.coordinates import (
    announced_coordinates,
    coordinates_from_bitmap,
    coordinates_to_bitmap,
    eligible_mask,
    flat_size,
    gather,
    round_coordinates,
    scatter,
)
from stamen.privacy.graph import graph_degree, graph_seed, neighbour_graph, shamir_threshold
from stamen.privacy.masking import (
    SEALED_SHARE_BYTES,
    SHARE_BYTES,
    AdvertisedKeys,
    DeviceSecrets,
    SecureAggregationError,
    check_share,
    mask,
    open_share,
    public_of,
    rebuild,
    remove_masks,
    seal_share,
    seed_commitment,
    share_secrets,
)
from stamen.privacy.modular import (
    Quantized,
    RoundScale,
    add_residues,
    centred,
    dequantize_sum,
    pack_residues,
    quantize,
    round_scale,
    rounded_norm_bound,
    to_residues,
    unpack_residues,
)
from stamen.privacy.skellam import skellam_noise, skellam_rdp

__all__ = [
    "SEALED_SHARE_BYTES",
    "SHARE_BYTES",
    "AdvertisedKeys",
    "DeviceSecrets",
    "DpMechanism",
    "PrivacyLedger",
    "Quantized",
    "RoundScale",
    "SecureAggregationError",
    "add_residues",
    "announced_coordinates",
    "calibrate_noise",
    "centred",
    "check_share",
    "coordinates_from_bitmap",
    "coordinates_to_bitmap",
    "dequantize_sum",
    "eligible_mask",
    "epsilon_of",
    "flat_size",
    "gather",
    "graph_degree",
    "graph_seed",
    "mask",
    "neighbour_graph",
    "open_share",
    "pack_residues",
    "poisson_subsampled_rdp",
    "public_of",
    "quantize",
    "rebuild",
    "remove_masks",
    "round_coordinates",
    "round_rdp",
    "round_scale",
    "rounded_norm_bound",
    "scatter",
    "seal_share",
    "seed_commitment",
    "shamir_threshold",
    "share_secrets",
    "skellam_noise",
    "skellam_rdp",
    "to_residues",
    "unpack_residues",
]
