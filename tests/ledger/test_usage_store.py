"""Fair-share usage in the ledger: what the batch scheduler saves after a pass, a restart reads."""

from __future__ import annotations

import pytest

from spawner.ledger import Ledger


def test_a_fresh_ledger_has_no_fair_share_usage(ledger: Ledger):
    assert ledger.fair_share_usage() == ({}, None)


def test_saved_usage_comes_back_per_group_with_the_time_it_was_decayed(ledger: Ledger):
    ledger.save_fair_share_usage({"nlp": 120.5, "vision": 0.25, None: 7.0}, updated_at=1000.0)
    usage, updated_at = ledger.fair_share_usage()
    assert usage == {"nlp": 120.5, "vision": 0.25, None: 7.0}
    assert updated_at == 1000.0


def test_saving_again_updates_the_groups_and_keeps_the_others(ledger: Ledger):
    ledger.save_fair_share_usage({"nlp": 100.0, "vision": 50.0}, updated_at=1000.0)
    ledger.save_fair_share_usage({"nlp": 80.0, "speech": 3.0}, updated_at=2000.0)
    usage, updated_at = ledger.fair_share_usage()
    assert usage == {"nlp": 80.0, "vision": 50.0, "speech": 3.0}
    assert updated_at == 2000.0


def test_usage_survives_a_new_ledger_on_the_same_database(ledger: Ledger, ledger_url: str):
    ledger.save_fair_share_usage({"nlp": 42.0}, updated_at=5.0)
    with Ledger(ledger_url) as reopened:
        reopened.create_schema()  # what a restarted service does first: it must keep the rows
        assert reopened.fair_share_usage() == ({"nlp": 42.0}, 5.0)


@pytest.mark.parametrize("usage", [{}, {"nlp": 0.0}])
def test_saving_nothing_or_zero_is_harmless(ledger: Ledger, usage):
    ledger.save_fair_share_usage(usage, updated_at=1.0)
    assert ledger.fair_share_usage()[0] == usage
