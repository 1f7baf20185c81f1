"""The Confluent Schema Registry REST API (the AVRO part of it) as a Starlette app.

Paths, bodies, status codes and ``error_code`` values follow Confluent's API reference, so
confluent-kafka's ``SchemaRegistryClient`` and its Avro serializers work against it unchanged. Reads are
served from memory; writes are serialized by one lock, appended to the Kafka log (acks=all, flushed) and
only then applied to memory and answered.
"""

import asyncio
import functools
import json
import logging
import uuid
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from schema_registry.avro_schemas import LEVELS, InvalidSchemaError, ParsedSchema, compatibility_problems, parse
from schema_registry.kafka_log import KafkaLog, LogError
from schema_registry.state import ID_BOUND_KEY, RegistryState, Version, config_key, schema_key

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
MAX_VERSION = 2**31 - 1


class ApiError(Exception):
    """An error answered in Confluent's shape: ``{"error_code": ..., "message": ...}``."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class RegistryJSON(JSONResponse):
    media_type = CONTENT_TYPE


def _error(status: int, code: int, message: str) -> Response:
    return RegistryJSON({"error_code": code, "message": message}, status_code=status)


def subject_not_found(subject: str) -> ApiError:
    return ApiError(404, 40401, f"Subject '{subject}' not found.")


def version_not_found(version: Any) -> ApiError:
    return ApiError(404, 40402, f"Version {version} not found.")


def schema_not_found(what: str = "Schema not found") -> ApiError:
    return ApiError(404, 40403, what)


class Registry:
    """The registry's state and its durable log, with Confluent's rules for every operation."""

    def __init__(self, log_store: KafkaLog) -> None:
        self.store = log_store
        self.state = RegistryState()
        self.write_lock = asyncio.Lock()
        self.ready = False

    # -- life cycle --------------------------------------------------------------------------------------------

    def load(self) -> int:
        """Create the log topic if needed and rebuild the state from it."""
        self.store.ensure_topic()
        state = RegistryState()
        count = self.store.replay(state)
        self.state = state
        self.ready = True
        return count

    async def write(self, records: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> None:
        """Append ``records`` durably, then apply them; the caller holds ``write_lock``."""
        try:
            await run_in_threadpool(self.store.append, records)
        except LogError as err:
            log.error("write failed, rebuilding state from the log: %s", err)
            try:  # some records may have landed: the log, not memory, is the truth
                await run_in_threadpool(self.load)
            except LogError as reload_err:
                log.error("rebuilding state failed: %s", reload_err)
            raise ApiError(500, 50001, f"Error while storing the change in Kafka: {err}") from err
        for key, value in records:
            self.state.apply(key, value)

    # -- helpers -----------------------------------------------------------------------------------------------

    def resolve_version(self, subject: str, version: str, include_deleted: bool = False) -> Version:
        """Confluent's version lookup: an int in [1, 2^31-1], or ``latest`` / ``-1``."""
        if not self.state.versions(subject, include_deleted=True):
            raise subject_not_found(subject)
        versions = self.state.versions(subject, include_deleted)
        if version in ("latest", "-1"):
            if not versions:
                raise subject_not_found(subject)
            return versions[-1]
        try:
            number = int(version)
        except ValueError:
            number = 0
        if not 1 <= number <= MAX_VERSION:
            raise ApiError(
                422,
                42202,
                f"The specified version '{version}' is not a valid version id. "
                f'Allowed values are between [1, 2^31-1] and the string "latest"',
            )
        for entry in versions:
            if entry.version == number:
                return entry
        raise version_not_found(number)

    @staticmethod
    def parse_request(body: dict[str, Any]) -> tuple[str, ParsedSchema]:
        """``(schemaType, ParsedSchema)`` from a register/lookup/compatibility body."""
        schema_type = (body.get("schemaType") or "AVRO").upper()
        if schema_type != "AVRO":
            raise ApiError(422, 42201, f"Invalid schema: schemaType {schema_type} is not supported (AVRO only)")
        if body.get("references"):
            raise ApiError(422, 42201, "Invalid schema: schema references are not supported by this registry")
        try:
            return schema_type, parse(body.get("schema"))
        except InvalidSchemaError as err:
            raise ApiError(422, 42201, str(err)) from err

    @staticmethod
    def problems(parsed: ParsedSchema, against: list[Version], level: str) -> list[str]:
        """Why ``parsed`` may not follow ``against`` (live versions, oldest first) under ``level``."""
        previous = [(v.version, _parsed(v.schema).schema) for v in against]
        return compatibility_problems(level, parsed.schema, previous)


@functools.lru_cache(maxsize=4096)
def _parsed(canonical: str) -> ParsedSchema:
    """Stored schemas are immutable, so each is parsed once."""
    return parse(canonical)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ApiError(400, 400, f"Unexpected character in request body: {err}") from err
    if not isinstance(body, dict):
        raise ApiError(422, 422, "The request body must be a JSON object")
    return body


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() == "true"


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    if not registry.ready:
        raise ApiError(503, 50003, "The registry is still loading its state from Kafka")
    return registry


def _version_body(entry: Version) -> dict[str, Any]:
    body: dict[str, Any] = {"subject": entry.subject, "version": entry.version, "id": entry.id, "schema": entry.schema}
    if entry.schema_type != "AVRO":
        body["schemaType"] = entry.schema_type
    return body


# -- routes ----------------------------------------------------------------------------------------------------


async def root(request: Request) -> Response:
    return RegistryJSON({})


async def schema_types(request: Request) -> Response:
    return RegistryJSON(["AVRO"])


async def schema_by_id(request: Request) -> Response:
    registry = _registry(request)
    schema_id = request.path_params["id"]
    found = registry.state.schema_by_id(schema_id)
    if found is None:
        raise schema_not_found(f"Schema {schema_id} not found")
    schema_type, text = found
    body: dict[str, Any] = {"schema": text}
    if schema_type != "AVRO":
        body["schemaType"] = schema_type
    return RegistryJSON(body)


async def schema_text_by_id(request: Request) -> Response:
    registry = _registry(request)
    found = registry.state.schema_by_id(request.path_params["id"])
    if found is None:
        raise schema_not_found(f"Schema {request.path_params['id']} not found")
    return Response(found[1], media_type=CONTENT_TYPE)


def _uses_of(registry: Registry, schema_id: int, include_deleted: bool) -> list[Version]:
    if registry.state.schema_by_id(schema_id) is None:
        raise schema_not_found(f"Schema {schema_id} not found")
    return [
        v
        for subject in registry.state.subject_names(include_deleted=True)
        for v in registry.state.versions(subject, include_deleted)
        if v.id == schema_id
    ]


async def subjects_of_id(request: Request) -> Response:
    registry = _registry(request)
    uses = _uses_of(registry, request.path_params["id"], _flag(request, "deleted"))
    return RegistryJSON(sorted({v.subject for v in uses}))


async def versions_of_id(request: Request) -> Response:
    registry = _registry(request)
    uses = _uses_of(registry, request.path_params["id"], _flag(request, "deleted"))
    return RegistryJSON([{"subject": v.subject, "version": v.version} for v in uses])


async def list_subjects(request: Request) -> Response:
    registry = _registry(request)
    names = registry.state.subject_names(include_deleted=_flag(request, "deleted"))
    prefix = request.query_params.get("subjectPrefix")
    if prefix and prefix != ":*:":
        names = [n for n in names if n.startswith(prefix)]
    return RegistryJSON(names)


async def list_versions(request: Request) -> Response:
    registry = _registry(request)
    subject = request.path_params["subject"]
    versions = registry.state.versions(subject, include_deleted=_flag(request, "deleted"))
    if not versions:
        raise subject_not_found(subject)
    return RegistryJSON([v.version for v in versions])


async def get_version(request: Request) -> Response:
    registry = _registry(request)
    entry = registry.resolve_version(
        request.path_params["subject"], request.path_params["version"], _flag(request, "deleted")
    )
    return RegistryJSON(_version_body(entry))


async def get_version_schema(request: Request) -> Response:
    registry = _registry(request)
    entry = registry.resolve_version(
        request.path_params["subject"], request.path_params["version"], _flag(request, "deleted")
    )
    return Response(entry.schema, media_type=CONTENT_TYPE)


async def referenced_by(request: Request) -> Response:
    registry = _registry(request)
    registry.resolve_version(request.path_params["subject"], request.path_params["version"], True)
    return RegistryJSON([])  # references are not supported, so nothing refers to anything


async def register(request: Request) -> Response:
    """POST /subjects/{subject}/versions: the existing id if the subject has the schema, else a new version."""
    registry = _registry(request)
    subject = request.path_params["subject"]
    schema_type, parsed = registry.parse_request(await _body(request))
    async with registry.write_lock:
        state = registry.state
        live = state.versions(subject)
        for entry in live:
            if entry.schema_type == schema_type and entry.schema == parsed.canonical:
                return RegistryJSON({"id": entry.id, "subject": subject, "version": entry.version})
        level = state.level(subject)
        problems = registry.problems(parsed, live, level)
        if problems:
            raise ApiError(
                409,
                409,
                f'Schema being registered is incompatible with an earlier schema for subject "{subject}", '
                f"details: [{', '.join(problems)}]",
            )
        schema_id = state.id_for(schema_type, parsed.canonical) or state.next_id()
        version = state.next_version(subject)
        entry = Version(subject, version, schema_id, parsed.canonical, schema_type)
        await registry.write([(schema_key(subject, version), entry.value())])
    return RegistryJSON({"id": schema_id, "subject": subject, "version": version})


async def lookup(request: Request) -> Response:
    """POST /subjects/{subject}: is this schema registered under the subject, and as which version?"""
    registry = _registry(request)
    subject = request.path_params["subject"]
    include_deleted = _flag(request, "deleted")
    schema_type, parsed = registry.parse_request(await _body(request))
    versions = registry.state.versions(subject, include_deleted)
    if not versions:
        raise subject_not_found(subject)
    for entry in reversed(versions):
        if entry.schema_type == schema_type and entry.schema == parsed.canonical:
            return RegistryJSON(_version_body(entry))
    raise schema_not_found()


async def delete_subject(request: Request) -> Response:
    registry = _registry(request)
    subject = request.path_params["subject"]
    permanent = _flag(request, "permanent")
    async with registry.write_lock:
        everything = registry.state.versions(subject, include_deleted=True)
        live = [v for v in everything if not v.deleted]
        if not everything:
            raise subject_not_found(subject)
        if permanent:
            if live:
                raise ApiError(
                    404,
                    40405,
                    f"Subject '{subject}' was not deleted first before being permanently deleted",
                )
            records = [(schema_key(subject, v.version), None) for v in everything]
            records.append((ID_BOUND_KEY, {"max_id": registry.state.max_id}))
            await registry.write(records)
            return RegistryJSON([v.version for v in everything])
        if not live:
            raise ApiError(404, 40404, f"Subject '{subject}' was soft deleted.Set permanent=true to delete permanently")
        await registry.write([(schema_key(subject, v.version), RegistryState.soft_deleted(v).value()) for v in live])
        return RegistryJSON([v.version for v in live])


async def delete_version(request: Request) -> Response:
    registry = _registry(request)
    subject = request.path_params["subject"]
    permanent = _flag(request, "permanent")
    version = request.path_params["version"]
    async with registry.write_lock:
        entry = registry.resolve_version(subject, version, include_deleted=permanent or version not in ("latest", "-1"))
        if entry.deleted and not permanent:
            raise ApiError(
                404,
                40406,
                f"Subject '{subject}' Version {entry.version} was soft deleted. "
                "Set permanent=true to delete permanently",
            )
        if permanent:
            if not entry.deleted:
                raise ApiError(
                    404,
                    40407,
                    f"Subject '{subject}' Version {entry.version} was not deleted first before being "
                    "permanently deleted",
                )
            await registry.write(
                [(schema_key(subject, entry.version), None), (ID_BOUND_KEY, {"max_id": registry.state.max_id})]
            )
        else:
            await registry.write([(schema_key(subject, entry.version), RegistryState.soft_deleted(entry).value())])
    return RegistryJSON(entry.version)


def _level_from(body: dict[str, Any]) -> str:
    level = str(body.get("compatibility") or body.get("compatibilityLevel") or "").upper()
    if level not in LEVELS:
        raise ApiError(422, 42203, f"Invalid compatibility level. Valid values are {', '.join(LEVELS)}")
    return level


async def get_global_config(request: Request) -> Response:
    registry = _registry(request)
    return RegistryJSON({"compatibilityLevel": registry.state.level(None)})


async def put_global_config(request: Request) -> Response:
    registry = _registry(request)
    level = _level_from(await _body(request))
    async with registry.write_lock:
        await registry.write([(config_key(None), {"compatibilityLevel": level})])
    return RegistryJSON({"compatibility": level})


async def delete_global_config(request: Request) -> Response:
    registry = _registry(request)
    async with registry.write_lock:
        previous = registry.state.level(None)
        await registry.write([(config_key(None), None)])
    return RegistryJSON({"compatibilityLevel": previous})


async def get_subject_config(request: Request) -> Response:
    registry = _registry(request)
    subject = request.path_params["subject"]
    if subject in registry.state.config:
        return RegistryJSON({"compatibilityLevel": registry.state.config[subject]})
    if _flag(request, "defaultToGlobal"):
        return RegistryJSON({"compatibilityLevel": registry.state.level(None)})
    raise ApiError(404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured")


async def put_subject_config(request: Request) -> Response:
    registry = _registry(request)
    subject = request.path_params["subject"]
    level = _level_from(await _body(request))
    async with registry.write_lock:
        await registry.write([(config_key(subject), {"compatibilityLevel": level})])
    return RegistryJSON({"compatibility": level})


async def delete_subject_config(request: Request) -> Response:
    registry = _registry(request)
    subject = request.path_params["subject"]
    async with registry.write_lock:
        if subject not in registry.state.config:
            raise ApiError(404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured")
        previous = registry.state.config[subject]
        await registry.write([(config_key(subject), None)])
    return RegistryJSON({"compatibilityLevel": previous})


async def get_mode(request: Request) -> Response:
    _registry(request)
    return RegistryJSON({"mode": "READWRITE"})


async def check_compatibility(request: Request) -> Response:
    """POST /compatibility/subjects/{subject}/versions[/{version}]: would this schema be accepted?"""
    registry = _registry(request)
    subject = request.path_params["subject"]
    version = request.path_params.get("version")
    _, parsed = registry.parse_request(await _body(request))
    level = registry.state.level(subject)
    if version is None:  # against every live version the level asks for
        against = registry.state.versions(subject)
    else:
        try:
            against = [registry.resolve_version(subject, version)]
        except ApiError as err:
            if err.code == 40401 and version in ("latest", "-1"):
                against = []  # nothing registered yet: anything is compatible
            else:
                raise
    problems = registry.problems(parsed, against, level)
    body: dict[str, Any] = {"is_compatible": not problems}
    if _flag(request, "verbose"):
        body["messages"] = problems
    return RegistryJSON(body)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc.status, exc.code, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.status_code, exc.detail or "HTTP error")


async def _unexpected(request: Request, exc: Exception) -> Response:
    """The detail goes to the server's log under an incident id; the client gets only the id, because an
    exception's text can hold anything (a connection string, a schema under review, a stack frame's values)."""
    incident = uuid.uuid4().hex[:12]
    log.exception("unexpected error %s on %s %s", incident, request.method, request.url.path)
    return _error(500, 50001, f"Internal error (incident {incident}; see the registry's log)")


ROUTES = [
    Route("/", root, methods=["GET"]),
    Route("/schemas/types", schema_types, methods=["GET"]),
    Route("/schemas/ids/{id:int}", schema_by_id, methods=["GET"]),
    Route("/schemas/ids/{id:int}/schema", schema_text_by_id, methods=["GET"]),
    Route("/schemas/ids/{id:int}/subjects", subjects_of_id, methods=["GET"]),
    Route("/schemas/ids/{id:int}/versions", versions_of_id, methods=["GET"]),
    Route("/subjects", list_subjects, methods=["GET"]),
    Route("/subjects/{subject}", lookup, methods=["POST"]),
    Route("/subjects/{subject}", delete_subject, methods=["DELETE"]),
    Route("/subjects/{subject}/versions", list_versions, methods=["GET"]),
    Route("/subjects/{subject}/versions", register, methods=["POST"]),
    Route("/subjects/{subject}/versions/{version}", get_version, methods=["GET"]),
    Route("/subjects/{subject}/versions/{version}", delete_version, methods=["DELETE"]),
    Route("/subjects/{subject}/versions/{version}/schema", get_version_schema, methods=["GET"]),
    Route("/subjects/{subject}/versions/{version}/referencedby", referenced_by, methods=["GET"]),
    Route("/config", get_global_config, methods=["GET"]),
    Route("/config", put_global_config, methods=["PUT"]),
    Route("/config", delete_global_config, methods=["DELETE"]),
    Route("/config/{subject}", get_subject_config, methods=["GET"]),
    Route("/config/{subject}", put_subject_config, methods=["PUT"]),
    Route("/config/{subject}", delete_subject_config, methods=["DELETE"]),
    Route("/mode", get_mode, methods=["GET"]),
    Route("/mode/{subject}", get_mode, methods=["GET"]),
    Route("/compatibility/subjects/{subject}/versions", check_compatibility, methods=["POST"]),
    Route("/compatibility/subjects/{subject}/versions/{version}", check_compatibility, methods=["POST"]),
]


def create_app(bootstrap: str, topic: str = "_schemas", timeout_s: float = 30.0) -> Starlette:
    """The registry app; its state is loaded from ``topic`` on ``bootstrap`` before it serves requests."""
    registry = Registry(KafkaLog(bootstrap, topic, timeout_s))

    @asynccontextmanager
    async def lifespan(app: Starlette):
        count = await run_in_threadpool(registry.load)
        log.info("loaded %d record(s) from %s on %s", count, topic, bootstrap)
        try:
            yield
        finally:
            await run_in_threadpool(registry.store.close)

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.registry = registry
    return app
