"""Where the local stack listens; loopback only, ports overridable by environment variables."""

import os

from pydantic import BaseModel, ConfigDict, Field


class StackSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Every component binds to loopback only.")
    kafka_port: int = Field(9092, description="Kafka broker (PLAINTEXT).")
    kafka_controller_port: int = Field(9093, description="Kafka KRaft controller.")
    registry_port: int = Field(8085, description="Confluent-compatible schema registry (REST).")
    postgres_port: int = Field(5432, description="PostgreSQL with the user profiles.")
    redis_port: int = Field(6379, description="Redis with the product catalogue.")
    prism_port: int = Field(8073, description="Prism's Beam job service (the local portable runner).")

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
