"""A Beam-native Kafka IO for Python: no Java, no expansion service, no Docker; runs on any portable runner.

``ReadFromKafka`` is a splittable DoFn with one restriction per topic-partition; ``WriteToKafka`` a DoFn
whose bundle fails unless Kafka acknowledged every record. See each module for the guarantees.
"""

from kafkaio.config import ClientConfig, KafkaConfigError
from kafkaio.sink import KafkaWriteError, WriteToKafka
from kafkaio.source import KafkaPartition, ReadConfig, ReadFromKafka

__all__ = [
    "ClientConfig",
    "KafkaConfigError",
    "KafkaPartition",
    "KafkaWriteError",
    "ReadConfig",
    "ReadFromKafka",
    "WriteToKafka",
]
