"""Packaging for the clickstream pipeline.

Beam is pinned to 2.76.0: the newest release whose Java artifacts (beam-sdks-java-core,
beam-sdks-java-io-kafka) resolve from Maven Central here, so the Python SDK and the Java KafkaIO
side run one Beam version.
"""

from setuptools import find_packages, setup

BEAM_VERSION = "2.76.0"

setup(
    name="clickstream-pipeline",
    version="0.1.0",
    description="Schema-first clickstream event pipeline on Apache Beam (DirectRunner in tests, Flink in production).",
    python_requires=">=3.11,<3.12",
    packages=find_packages(
        include=[
            "schemas",
            "schema_registry",
            "transforms",
            "beam_pipelines",
            "runners",
            "runners.*",
            "ingestion",
            "kafkaio",
            "monitoring",
            "telemetry",
            "benchmarks",
        ]
    ),
    package_data={"schemas": ["avro/*.avsc"], "beam_pipelines": ["config/*.yaml"]},
    install_requires=[
        f"apache-beam[gcp]=={BEAM_VERSION}",
        "fastavro==1.13.1",
        "confluent-kafka[schemaregistry]==2.16.1",
        "prometheus-client==0.26.0",
        "pydantic==2.14.4",
        "PyYAML==6.0.4",
        # local stack, schema registry and ingestion service
        "starlette==1.10.0",
        "uvicorn==0.54.0",
        "httpx==0.28.1",
        "avro==1.12.2",
        # enrichment: per-worker TTL cache, retries with backoff (both already required by apache-beam[gcp])
        "cachetools==6.2.6",
        "tenacity==9.1.4",
        # real enrichment stores
        "psycopg[binary]==3.3.9",
        "redis==8.1.0",
        # monitoring.report: the run's throughput, latency and lag as a PNG without Grafana
        "matplotlib==3.11.2",
    ],
    extras_require={
        "dev": ["pytest==9.2.0", "ruff==0.17.6", "py-spy==0.4.3"],
    },
)
