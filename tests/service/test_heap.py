"""The service's setting of Python's cycle collector (``spawner.service.heap``)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from spawner.service.heap import settle_collector


@pytest.fixture
def collector() -> Iterator[None]:
    """Python's collector as the test found it, afterwards."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_start_up_objects_are_frozen_and_young_collections_come_less_often(collector: None) -> None:
    built_at_start_up = [{"kept": index} for index in range(1000)]
    _, middle, old = gc.get_threshold()
    settle_collector(50_000)
    assert gc.get_threshold() == (50_000, middle, old)
    assert gc.get_freeze_count() >= len(built_at_start_up)


def test_zero_keeps_pythons_thresholds(collector: None) -> None:
    before = gc.get_threshold()
    settle_collector(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() > 0


class _Node:
    cycle: _Node


def test_garbage_cycles_made_while_serving_are_still_freed_without_being_asked(collector: None) -> None:
    settle_collector(50_000)
    freed = []
    node = _Node()
    node.cycle = node
    weakref.finalize(node, freed.append, "freed")
    del node
    # Requests allocate: past the threshold a young collection runs by itself and frees the cycle.
    allocations = [[index] for index in range(120_000)]
    assert freed == ["freed"]
    assert len(allocations) == 120_000
