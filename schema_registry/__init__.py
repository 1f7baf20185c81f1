"""A small Confluent-compatible schema registry (AVRO), persisted in a compacted Kafka topic.

The local stack uses it because no real registry runs here without Docker: Confluent's and Karapace are
not in the package registries this project can use, and Apicurio Registry's app artifact on Maven Central
depends on a module Maven Central does not serve. Run it with
``python -m schema_registry --port 8085 --bootstrap 127.0.0.1:9092``.
"""

from schema_registry.app import create_app

__all__ = ["create_app"]
