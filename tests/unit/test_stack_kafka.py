"""Kafka's cluster id as the stack generates it: what ``kafka-storage format`` accepts."""

import base64
import re

from runners.stack.kafka import new_cluster_id


def test_cluster_ids_are_kafka_uuids_that_never_read_as_an_option():
    ids = [new_cluster_id() for _ in range(5000)]  # a leading "-" has a 1 in 64 chance per raw draw
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", i) for i in ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
