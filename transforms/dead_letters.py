"""Builds dead-letter records: the original bytes, where they came from, the stage and the reason."""

import time
from typing import Optional

from schemas.records import DeadLetter, KafkaRecord


def dead_letter(
    stage: str,
    error_code: str,
    reason: str,
    original: bytes,
    source: Optional[KafkaRecord] = None,
) -> DeadLetter:
    return DeadLetter(
        original=original,
        key=source.key if source else None,
        topic=source.topic if source else None,
        partition=source.partition if source else None,
        offset=source.offset if source else None,
        stage=stage,
        error_code=error_code,
        reason=reason,
        error_time=int(time.time() * 1000),
    )
