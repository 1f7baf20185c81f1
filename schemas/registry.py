"""Schema registry clients behind one small seam.

``ConfluentRegistry`` talks to any Confluent-compatible REST registry through confluent-kafka's own
``SchemaRegistryClient``; ``InMemoryRegistry`` is for unit tests and the DirectRunner demo. Both are
picklable so Beam can ship them to workers: the HTTP client is created lazily on the worker, and the basic-auth
credentials are a ``schemas.secrets.Credential`` (an ``EnvSecret`` in a pipeline graph), revealed only then.
"""

from typing import Protocol

from schemas.secrets import Credential, reveal


class SchemaNotFoundError(LookupError):
    """The registry has no schema with this id (it answered 404): the record's fault."""


class RegistryUnavailableError(ConnectionError):
    """The registry could not be asked (network, timeout, 5xx): an infrastructure fault, never the record's."""


#: HTTP statuses that mean "ask again later" rather than "no".
_TRANSIENT_STATUSES = frozenset({408, 429})


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

    def __init__(self, url: str, basic_auth: Credential | None = None) -> None:
        import confluent_kafka.schema_registry  # noqa: F401  fail at launch, not per record, if extras are missing

        self._url = url
        self._basic_auth = basic_auth
        self._client = None

    def __getstate__(self) -> dict:
        return {"_url": self._url, "_basic_auth": self._basic_auth, "_client": None}

    def __repr__(self) -> str:
        return f"ConfluentRegistry({self._url!r})"

    def _get_client(self):
        if self._client is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            conf = {"url": self._url}
            if self._basic_auth is not None:
                conf["basic.auth.user.info"] = reveal(self._basic_auth)
            self._client = SchemaRegistryClient(conf)
        return self._client

    def register(self, subject: str, schema_str: str) -> int:
        from confluent_kafka.schema_registry import Schema

        return self._call(
            f"registering under {subject}", lambda c: c.register_schema(subject, Schema(schema_str, "AVRO"))
        )

    def schema_by_id(self, schema_id: int) -> str:
        return self._call(f"schema id {schema_id}", lambda c: c.get_schema(schema_id).schema_str)

    def _call(self, what: str, call):
        """``call(client)``; 404 -> ``SchemaNotFoundError``, unreachable or 5xx -> ``RegistryUnavailableError``,
        any other refusal (401, 409, 422) raised as the client's error. A missing credential
        (``MissingSecretError``) is raised as it is: waiting would not bring it."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        client = self._get_client()
        try:
            return call(client)
        except SchemaRegistryError as err:
            status = err.http_status_code
            if status == 404:
                raise SchemaNotFoundError(f"{what}: not registered ({err.error_message})") from err
            if status >= 500 or status in _TRANSIENT_STATUSES:
                raise RegistryUnavailableError(f"{what}: registry answered {status} ({err.error_message})") from err
            raise
        except Exception as err:  # the client's transport errors (connection refused, timeouts, DNS)
            raise RegistryUnavailableError(f"{what}: registry unreachable ({type(err).__name__}: {err})") from err
