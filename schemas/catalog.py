"""The project's Avro contracts, loaded once from ``schemas/avro`` and cached.

Schemas that reference another named type (the enriched event embeds ``ClickEvent``) are stored
with the reference and expanded here, so each contract is written once and every registered
schema is self-contained, as a Confluent registry expects.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

AVRO_DIR = Path(__file__).parent / "avro"

#: Contract name -> file. ``clickstream_event`` is the version the pipeline reads with.
CONTRACTS: dict[str, str] = {
    "clickstream_event.v1": "clickstream_event.v1.avsc",
    "clickstream_event.v2": "clickstream_event.v2.avsc",
    "clickstream_event": "clickstream_event.v2.avsc",
    "enriched_event": "enriched_event.avsc",
    "window_metric": "window_metric.avsc",
    "session_summary": "session_summary.avsc",
    "dead_letter": "dead_letter.avsc",
}

#: Named types other contracts may reference, resolved to the current version.
_REFERENCES: dict[str, str] = {"clickstream.events.ClickEvent": "clickstream_event"}


def _expand(node: Any) -> Any:
    if isinstance(node, str) and node in _REFERENCES:
        return schema_json(_REFERENCES[node])
    if isinstance(node, list):
        return [_expand(n) for n in node]
    if isinstance(node, dict):
        return {k: _expand(v) for k, v in node.items()}
    return node


@functools.cache
def schema_json(name: str) -> dict[str, Any]:
    """The self-contained JSON schema of a contract (references expanded)."""
    try:
        filename = CONTRACTS[name]
    except KeyError:
        raise KeyError(f"unknown schema contract {name!r}; known: {sorted(CONTRACTS)}") from None
    return _expand(json.loads((AVRO_DIR / filename).read_text()))


def canonical(schema: Any) -> str:
    """A schema's canonical JSON text (compact, sorted keys): what is registered, so equal schemas get one id."""
    return json.dumps(schema, separators=(",", ":"), sort_keys=True)
