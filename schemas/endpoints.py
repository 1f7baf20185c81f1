"""The default endpoints and channel names every part of the project shares: where the local stack
listens (loopback only) and what the raw topic, its subject and the pipeline's group are called.

One place for these facts: the stack's settings, the pipeline's settings, the ingestion and registry
CLIs and the benchmarks all take their defaults from here (each can still be overridden at run time).
It lives in the bottom layer, Beam-free, so every package may read it.
"""

HOST = "127.0.0.1"
KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
REGISTRY_PORT = 8085
POSTGRES_PORT = 5432
REDIS_PORT = 6379
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9094
ALERT_WEBHOOK_PORT = 9095
LAG_EXPORTER_PORT = 9308
INGESTION_PORT = 8090
PRISM_PORT = 8073
PRISM_UI_PORT = 8074
FLINK_REST_PORT = 8081

KAFKA_BOOTSTRAP = f"{HOST}:{KAFKA_PORT}"
REGISTRY_URL = f"http://{HOST}:{REGISTRY_PORT}"

RAW_TOPIC = "clickstream.events.raw"
PIPELINE_GROUP = "clickstream-pipeline"


def value_subject(topic: str) -> str:
    """The registry subject of a topic's values (Confluent's TopicNameStrategy)."""
    return f"{topic}-value"
