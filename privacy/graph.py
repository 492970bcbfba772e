"""The sparse graph of device pairs that mask each other, after SecAgg+.

Bell, Bonawitz, Gascón, Lepoint and Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020, https://eprint.iacr.org/2020/704: instead of
every pair of devices (Bonawitz et al. 2017), each device masks with, and shares its
secrets among, ``k`` neighbours of a random graph, ``k = O(log n)``. Here the graph is
a random Harary graph (a ring of the devices in a seeded random order, each joined to
``k/2`` devices on either side), drawn from public information so that every device
can check the neighbours the server names.

The degree is the smallest even ``k`` for which, with a fraction ``dropout`` of the
round's devices gone uniformly at random, the chance that some device's
neighbourhood keeps fewer than its Shamir threshold is at most :data:`FAILURE_BOUND`
(a union bound over the devices of the hypergeometric tail, computed exactly). Small
rounds get the complete graph, where the threshold is a plain count.

Examples:
    >>> graph = neighbour_graph([1, 2, 3, 4, 5], degree=2, seed=b"x")
    >>> sorted(len(v) for v in graph.values())
    [2, 2, 2, 2, 2]
    >>> all(u in graph[v] for u in graph for v in graph[u])
    True
    >>> graph_degree(20, threshold_fraction=0.6, dropout=0.3)
    14
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

FAILURE_BOUND = 1e-6
"""Allowed chance, at the tolerated dropout, that some neighbourhood falls below threshold."""


def shamir_threshold(degree: int, threshold_fraction: float) -> int:
    """Shares needed to rebuild a secret shared among a device and its ``degree`` neighbours."""
    return max(2, math.ceil(threshold_fraction * (degree + 1)))


def _tail_below(population: int, survivors: int, draws: int, threshold: int) -> float:
    # P[X < threshold], X ~ Hypergeometric(population, survivors, draws).
    total = math.comb(population, draws)
    dropped = population - survivors
    return (
        sum(
            math.comb(survivors, x) * math.comb(dropped, draws - x)
            for x in range(max(0, draws - dropped), min(threshold, draws + 1))
        )
        / total
    )


def graph_degree(devices: int, *, threshold_fraction: float, dropout: float) -> int:
    """The degree of the round's graph for ``devices`` (see the module's rule)."""
    if devices <= 2:
        return max(0, devices - 1)
    dropped = math.floor(dropout * devices)
    for degree in range(2, devices - 1, 2):
        threshold = shamir_threshold(degree, threshold_fraction)
        tail = _tail_below(devices, devices - dropped, degree + 1, threshold)
        if devices * tail <= FAILURE_BOUND:
            return degree
    return devices - 1


def graph_seed(round_num: int, run_seed: int, nodes: Sequence[int]) -> bytes:
    """The public seed of a round's graph: its round, the run's seed and who advertised keys."""
    text = f"stamen.secagg.graph:{run_seed}:{round_num}:" + ",".join(map(str, sorted(nodes)))
    return hashlib.sha256(text.encode()).digest()


def neighbour_graph(
    nodes: Sequence[int], *, degree: int, seed: bytes
) -> dict[int, tuple[int, ...]]:
    """Each node's neighbours (sorted) in the random Harary graph of ``degree`` on ``nodes``."""
    ordered = sorted(set(nodes))
    count = len(ordered)
    if degree >= count - 1:
        return {u: tuple(v for v in ordered if v != u) for u in ordered}
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed[:16], "little")))
    ring = [ordered[i] for i in rng.permutation(count)]
    half = degree // 2
    graph: dict[int, set[int]] = {u: set() for u in ordered}
    for position, node in enumerate(ring):
        for step in range(1, half + 1):
            other = ring[(position + step) % count]
            graph[node].add(other)
            graph[other].add(node)
    return {u: tuple(sorted(graph[u])) for u in ordered}
