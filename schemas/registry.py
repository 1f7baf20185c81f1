"""Schema registry clients behind one small seam.

``ConfluentRegistry`` talks to any Confluent-compatible REST registry through confluent-kafka's own
``SchemaRegistryClient``; ``InMemoryRegistry`` is for unit tests and the DirectRunner demo. Both are
picklable so Beam can ship them to workers: the HTTP client is created lazily on the worker.
"""

from typing import Protocol


class SchemaNotFoundError(LookupError):
    """The registry has no schema with this id."""


class SchemaRegistry(Protocol):
    def register(self, subject: str, schema_str: str) -> int:
        """Register (or look up) an Avro schema under ``subject`` and return its global id."""

    def schema_by_id(self, schema_id: int) -> str:
        """The Avro schema text for ``schema_id``; raises ``SchemaNotFoundError``."""


class InMemoryRegistry:
    """A process-local registry with Confluent's id semantics (one id per distinct schema)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, str] = {}
        self._subjects: dict[str, list[int]] = {}

    def register(self, subject: str, schema_str: str) -> int:
        schema_id = self._ids.get(schema_str)
        if schema_id is None:
            schema_id = len(self._schemas) + 1
            self._ids[schema_str] = schema_id
            self._schemas[schema_id] = schema_str
        versions = self._subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    def schema_by_id(self, schema_id: int) -> str:
        try:
            return self._schemas[schema_id]
        except KeyError:
            raise SchemaNotFoundError(f"schema id {schema_id} is not registered") from None


class ConfluentRegistry:
    """A Confluent REST registry, via ``confluent_kafka.schema_registry.SchemaRegistryClient``."""

    def __init__(self, url: str, basic_auth: str | None = None) -> None:
        import confluent_kafka.schema_registry  # noqa: F401  fail at launch, not per record, if extras are missing

        self._conf = {"url": url}
        if basic_auth:
            self._conf["basic.auth.user.info"] = basic_auth
        self._client = None

    def __getstate__(self) -> dict:
        return {"_conf": self._conf, "_client": None}

    def _get_client(self):
        if self._client is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            self._client = SchemaRegistryClient(self._conf)
        return self._client

    def register(self, subject: str, schema_str: str) -> int:
        from confluent_kafka.schema_registry import Schema

        return self._get_client().register_schema(subject, Schema(schema_str, "AVRO"))

    def schema_by_id(self, schema_id: int) -> str:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return self._get_client().get_schema(schema_id).schema_str
        except SchemaRegistryError as err:
            if err.http_status_code == 404:
                raise SchemaNotFoundError(f"schema id {schema_id} is not registered: {err}") from err
            raise
