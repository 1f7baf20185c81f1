"""Event contracts: Avro schemas, typed records, registry clients and the Confluent wire-format serde."""
