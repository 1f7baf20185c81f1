"""Where the local stack listens; loopback only, ports overridable by environment variables."""

import os

from pydantic import BaseModel, ConfigDict, Field

from schemas import endpoints


class StackSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(endpoints.HOST, description="Every component binds to loopback only.")
    kafka_port: int = Field(endpoints.KAFKA_PORT, description="Kafka broker (PLAINTEXT).")
    kafka_controller_port: int = Field(endpoints.KAFKA_CONTROLLER_PORT, description="Kafka KRaft controller.")
    registry_port: int = Field(endpoints.REGISTRY_PORT, description="Confluent-compatible schema registry (REST).")
    postgres_port: int = Field(endpoints.POSTGRES_PORT, description="PostgreSQL with the user profiles.")
    redis_port: int = Field(endpoints.REDIS_PORT, description="Redis with the product catalogue.")
    prism_port: int = Field(endpoints.PRISM_PORT, description="Prism's Beam job service (the local portable runner).")
    prism_ui_port: int = Field(endpoints.PRISM_UI_PORT, description="Prism's web UI (jobs, their stages and metrics).")
    prometheus_port: int = Field(endpoints.PROMETHEUS_PORT, description="Prometheus (UI and HTTP API).")
    alertmanager_port: int = Field(endpoints.ALERTMANAGER_PORT, description="Alertmanager (UI and HTTP API).")
    alert_webhook_port: int = Field(
        endpoints.ALERT_WEBHOOK_PORT, description="Where the local Alertmanager delivers (POST /<receiver>)."
    )
    lag_exporter_port: int = Field(endpoints.LAG_EXPORTER_PORT, description="Consumer-lag exporter's /metrics.")
    ingestion_port: int = Field(endpoints.INGESTION_PORT, description="Ingestion service (POST /v1/events, /metrics).")
    worker_metrics_port: int = Field(
        0, ge=0, description="/metrics of each pipeline worker; 0: a free port each, found by file-based discovery."
    )

    @classmethod
    def from_env(cls) -> "StackSettings":
        """Defaults, overridden by STACK_<FIELD> environment variables (e.g. STACK_KAFKA_PORT=19092)."""
        values = {
            name: os.environ[f"STACK_{name.upper()}"]
            for name in cls.model_fields
            if f"STACK_{name.upper()}" in os.environ
        }
        return cls.model_validate(values)

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def registry_url(self) -> str:
        return f"http://{self.host}:{self.registry_port}"
