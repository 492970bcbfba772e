"""Coordinate-wise median of the decoded deltas: robust to a minority of arbitrary updates.

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", ICML 2018, https://arxiv.org/abs/1803.01498.

Each coordinate of the new delta is the median of that coordinate over the
round's accepted deltas (unweighted, as in the paper), so fewer than half the
devices cannot move it outside the range of honest values.

With top-k uplinks most coordinates of most deltas are zero, so the median is
zero wherever fewer than half the devices sent that coordinate: learning slows
a lot. Use it with dense (``topk_ratio`` 1) or mildly sparse uplinks;
:class:`~stamen.strategies.TrimmedMean` degrades more gracefully.

Examples:
    >>> import numpy as np
    >>> from stamen.transport import ValidUpdate
    >>> updates = [ValidUpdate({"w": np.array([v])}, 1, 0, False, None) for v in (1.0, 2.0, 90.0)]
    >>> coordinate_median(updates)["w"]
    array([2.])
"""

from __future__ import annotations

import numpy as np

from stamen.strategies.compressed_fedavg import CompressedFedAvg
from stamen.transport.deltas import stacked
from stamen.transport.reply_validation import ValidUpdate


def coordinate_median(updates: list[ValidUpdate]) -> dict[str, np.ndarray]:
    """The coordinate-wise median of the updates' deltas."""
    return {name: np.median(stacked(updates, name), axis=0) for name in updates[0].delta}


class CoordinateMedian(CompressedFedAvg):
    """Compressed FedAvg that aggregates with the coordinate-wise median."""

    def aggregate_deltas(self, updates: list[ValidUpdate]) -> dict[str, np.ndarray]:
        """The coordinate-wise median of the accepted deltas."""
        return coordinate_median(updates)
