"""A Beam-native Kafka IO for Python: no Java, no expansion service, no Docker; runs on any portable runner.

``ReadFromKafka`` is a splittable DoFn with one restriction per topic-partition; ``WriteToKafka`` a DoFn
whose bundle fails unless Kafka acknowledged every record; ``CommitOffsets`` commits an input offset once
every output of the records before it is acknowledged; ``RecoveringProducer`` replaces a producer that stopped
delivering. See each module for the guarantees.
"""

from kafkaio.commit import AckLedger, CommitOffsets
from kafkaio.config import ClientConfig, KafkaConfigError
from kafkaio.producer import RecoveringProducer
from kafkaio.sink import KafkaWriteError, WriteToKafka
from kafkaio.source import KafkaPartition, ReadConfig, ReadFromKafka

__all__ = [
    "AckLedger",
    "CommitOffsets",
    "ClientConfig",
    "KafkaConfigError",
    "KafkaPartition",
    "KafkaWriteError",
    "ReadConfig",
    "ReadFromKafka",
    "RecoveringProducer",
    "WriteToKafka",
]
