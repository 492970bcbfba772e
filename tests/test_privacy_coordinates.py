"""The round's coordinates: public rules that the server and every device agree on."""

import numpy as np
import pytest

from stamen.privacy import (
    announced_coordinates,
    coordinates_from_bitmap,
    coordinates_to_bitmap,
    eligible_mask,
    round_coordinates,
)

SHAPES = {"w": (10, 20), "b": (20,)}
MASKS = {"w": np.arange(200).reshape(10, 20) % 2 == 0}


def test_the_random_rule_is_the_same_for_everyone_and_skips_pruned_weights() -> None:
    first = round_coordinates(SHAPES, MASKS, ratio=0.25, seed=3, round_num=7)
    again = round_coordinates(SHAPES, MASKS, ratio=0.25, seed=3, round_num=7)
    assert np.array_equal(first, again) and first.size == 30  # 25% of 100 + 20 unpruned
    assert eligible_mask(SHAPES, MASKS)[first].all()
    assert not np.array_equal(
        first, round_coordinates(SHAPES, MASKS, ratio=0.25, seed=3, round_num=8)
    )


def test_announced_coordinates_follow_the_global_change_and_keep_exploring() -> None:
    eligible = eligible_mask(SHAPES, MASKS)
    importance = np.zeros(eligible.size)
    importance[[0, 2, 4]] = [3.0, 2.0, 1.0]
    chosen = announced_coordinates(importance, eligible, ratio=0.1, seed=0, round_num=1)
    assert chosen.size == 12 and {0, 2, 4} <= set(chosen.tolist())
    assert eligible[chosen].all()
    bitmap = coordinates_to_bitmap(chosen, eligible.size)
    assert len(bitmap) == 28 and np.array_equal(
        coordinates_from_bitmap(bitmap, eligible.size, eligible), chosen
    )


def test_a_device_refuses_a_bitmap_that_names_pruned_weights_or_has_the_wrong_size() -> None:
    eligible = eligible_mask(SHAPES, MASKS)
    with pytest.raises(ValueError, match="pruned"):
        coordinates_from_bitmap(
            coordinates_to_bitmap(np.array([1]), eligible.size), eligible.size, eligible
        )
    with pytest.raises(ValueError, match="bytes"):
        coordinates_from_bitmap(b"\xff", eligible.size, eligible)
