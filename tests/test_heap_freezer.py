"""The edge server keeps its long-lived heap out of the collector's full scans."""

from __future__ import annotations

import gc
import weakref

from stamen.server import HeapFreezer


class Node:
    """A cyclic object, as sessions and streams are."""

    def __init__(self) -> None:
        self.me = self


def test_what_lives_at_the_first_round_is_frozen_and_garbage_is_not() -> None:
    garbage = Node()
    dead = weakref.ref(garbage)
    del garbage
    kept = Node()
    freezer = HeapFreezer()
    freezer.on_start(3, 0.1)
    try:
        assert dead() is None  # collected first, not frozen for the run
        assert not any(found is kept for found in gc.get_objects())  # out of every scan
    finally:
        freezer.on_finish({})
    assert any(found is kept for found in gc.get_objects())  # given back once the run ends
