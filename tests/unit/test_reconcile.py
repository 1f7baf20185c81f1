"""Count reconciliation: every input record has exactly one fate; redeliveries are duplicates, not errors."""

from collections import Counter

from runners.reconcile import InputRecord, reconcile


def inputs(*event_ids: str | None) -> list[InputRecord]:
    """Input records at offsets 0.. of partition 0."""
    return [InputRecord(0, offset, event_id) for offset, event_id in enumerate(event_ids)]


def test_exact_match_is_ok():
    result = reconcile(inputs("e1", "e2", "e3", None), {"purchases": ["e1"], "views": ["e2"]}, ["e3"], [(0, 3)])
    assert (result.records_in, result.routed, result.filtered, result.dead_lettered) == (4, 2, 1, 1)
    assert result.ok
    assert result.lost == [] and result.foreign == [] and sum(result.duplicates.values()) == 0
    line = result.line()
    assert "in 4 = routed 2 + dead-lettered 1 + filtered 1 -> OK" in line
    assert "lost 0; duplicates 0" in line
    assert "MISMATCH" not in line


def test_a_lost_record_is_a_mismatch_and_listed():
    result = reconcile(inputs("e1", "e2", None), {"purchases": ["e1"]}, [], [])
    assert not result.ok
    assert result.lost == ["0:2", "e2"]
    assert result.routed == 1
    line = result.line()
    assert "-> MISMATCH" in line
    assert "lost 2" in line
    assert "lost: 0:2, e2" in line


def test_redeliveries_are_duplicates_and_still_ok():
    result = reconcile(
        inputs("e1", "e2", None),
        {"purchases": ["e1", "e1"]},  # written twice (a retried bundle)
        ["e2"],
        [(0, 2), (0, 2)],  # dead-lettered twice (read again after a restart)
    )
    assert result.ok
    assert (result.routed, result.dead_lettered, result.filtered) == (1, 1, 1)
    assert result.duplicates == Counter({"routed": 1, "dead_letters": 1})
    line = result.line()
    assert "-> OK" in line
    assert "duplicates 2 (dead_letters 1, routed 1)" in line


def test_an_event_in_three_routes_has_one_fate():
    result = reconcile(inputs("e1"), {"purchases": ["e1"], "revenue": ["e1"], "audit": ["e1"]}, [], [])
    assert result.ok
    assert result.routed == 1
    assert sum(result.duplicates.values()) == 0


def test_an_event_published_twice_needs_two_fates():
    twice = inputs("e1", "e1")
    once = reconcile(twice, {"purchases": ["e1"]}, [], [])
    assert once.records_in == 2
    assert not once.ok
    assert once.lost == ["e1"]

    both = reconcile(twice, {"purchases": ["e1", "e1"], "audit": ["e1", "e1"]}, [], [])
    assert both.ok
    assert both.routed == 2
    assert sum(both.duplicates.values()) == 0

    mixed = reconcile(twice, {"purchases": ["e1"]}, ["e1"], [])
    assert mixed.ok
    assert (mixed.routed, mixed.filtered) == (1, 1)


def test_a_dead_letter_naming_an_unknown_position_is_foreign():
    result = reconcile(inputs("e1"), {"purchases": ["e1"]}, [], [(3, 99)])
    assert result.foreign == ["dead letter 3:99"]
    assert result.lost == []
    assert not result.ok
    line = result.line()
    assert "-> MISMATCH" in line
    assert "foreign: dead letter 3:99" in line


def test_an_output_naming_no_input_is_foreign():
    result = reconcile(inputs("e1"), {"purchases": ["e1", "ghost"]}, ["phantom"], [])
    assert result.foreign == ["event ghost", "event phantom"]
    assert not result.ok


def test_long_id_lists_are_cut_in_the_line():
    result = reconcile(inputs(*[f"e{n}" for n in range(7)]), {}, [], [])
    assert len(result.lost) == 7
    assert result.line().endswith("lost: e0, e1, e2, e3, e4 ...")
