"""Builds dead-letter records: the original bytes, where they came from, the stage and the reason."""

import time

from schemas.records import DeadLetter, KafkaRecord, Provenance, TrackedDeadLetter


def dead_letter(
    stage: str,
    error_code: str,
    reason: str,
    original: bytes,
    source: KafkaRecord | None = None,
    provenance: Provenance | None = None,
) -> TrackedDeadLetter:
    """A dead letter of ``source`` (the input record as read) and, for one output part of it, its ``provenance``;
    neither for a record of an aggregate output."""
    if provenance is None and source is not None:
        provenance = Provenance.of(source)
    origin = source or provenance
    record = DeadLetter(
        original=original,
        key=source.key if source else None,
        topic=origin.topic if origin else None,
        partition=origin.partition if origin else None,
        offset=origin.offset if origin else None,
        stage=stage,
        error_code=error_code,
        reason=reason,
        error_time=int(time.time() * 1000),
    )
    return TrackedDeadLetter(record, provenance)
