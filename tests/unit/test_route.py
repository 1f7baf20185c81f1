import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.records import EnrichedEvent, Provenance, TrackedEnriched
from tests.unit.conftest import batch_options, make_event
from transforms.route import RouteEvents, RouteRule

RULES = [
    RouteRule(name="orders", event_types=frozenset({"purchase", "checkout"})),
    RouteRule(name="alerts", min_amount_minor=50_000),
    RouteRule(name="nordics", countries=frozenset({"SE", "NO"})),
    RouteRule(name="enriched", enrichment_statuses=frozenset({"enriched", "partial"})),
]


def _enriched(event_id, status="enriched", **fields):
    offset = sum(map(ord, event_id))  # any distinct offset per event
    return TrackedEnriched(
        EnrichedEvent(make_event(event_id=event_id, **fields), None, None, status, []),
        Provenance("raw", 0, offset, offset, 0, 1),
    )


def test_events_go_to_every_matching_route_and_unmatched_to_default():
    events = [
        _enriched("small-purchase", amount_minor=1_000),
        _enriched("big-purchase", amount_minor=75_000),
        _enriched("big-purchase-unenriched", status="not_enriched", amount_minor=60_000),
        _enriched("view", event_type="page_view", product_id=None, amount_minor=None, currency=None),
        _enriched("lost-view", status="not_enriched", event_type="page_view", amount_minor=None, currency=None),
        _enriched("swedish-view", status="not_enriched", event_type="search", country="SE", amount_minor=None),
    ]
    expected = {
        "orders": ["small-purchase", "big-purchase", "big-purchase-unenriched"],
        "alerts": ["big-purchase", "big-purchase-unenriched"],
        "nordics": ["swedish-view"],
        "enriched": ["small-purchase", "big-purchase", "view"],
        "unrouted": ["lost-view"],
    }
    with TestPipeline(options=batch_options()) as p:
        routes = p | beam.Create(events) | RouteEvents(RULES, "unrouted")
        assert sorted(routes) == sorted(expected)
        for name, ids in expected.items():
            assert_that(
                routes[name] | f"Ids[{name}]" >> beam.Map(lambda e: e.record.event.event_id), equal_to(ids), label=name
            )
        # Each copy is one part of its record: big-purchase took orders, alerts and enriched (in rule order).
        parts = (
            [routes[name] for name in expected]
            | beam.Flatten()
            | beam.Map(lambda e: (e.record.event.event_id, e.provenance.part, e.provenance.parts))
        )
        assert_that(
            parts | "BigPurchase" >> beam.Filter(lambda t: t[0] == "big-purchase"),
            equal_to([("big-purchase", 0, 3), ("big-purchase", 1, 3), ("big-purchase", 2, 3)]),
            label="parts",
        )


def test_route_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="unique"):
        RouteEvents([RULES[0], RULES[0]], "unrouted")
    with pytest.raises(ValueError, match="default route"):
        RouteEvents(RULES, "orders")
    with pytest.raises(ValueError, match="name"):
        RouteRule(name="Bad Name")
