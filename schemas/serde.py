"""Avro in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary.

Decoding resolves the writer's schema (fetched by id, parsed once and cached) against the reader
schema the pipeline expects, so producers can evolve compatibly without redeploying the pipeline.
Every failure of a record raises a ``SerdeError`` subclass with a stable ``code`` that becomes the
dead-letter ``error_code``. A registry that cannot be asked is not the record's fault: it raises
``RegistryUnavailableError`` (not a ``SerdeError``), which the pipeline retries and never dead-letters.
An id the registry answers 404 for is remembered for ``NOT_FOUND_TTL_SECONDS``, so a flood of records
with an unknown id costs one registry call, not one per record.
"""

import io
import json
import struct
import time
from collections.abc import Mapping
from typing import Any

import fastavro
from fastavro.read import SchemaResolutionError as _FastavroResolutionError

from schemas.catalog import canonical
from schemas.registry import RegistryUnavailableError as RegistryUnavailableError  # callers catch it here too
from schemas.registry import SchemaNotFoundError, SchemaRegistry

MAGIC_BYTE = 0
NOT_FOUND_TTL_SECONDS = 60.0
_HEADER = struct.Struct(">BI")


class SerdeError(ValueError):
    """A record that cannot be encoded or decoded; ``code`` is stable, the message is detail."""

    code = "serde_error"


class BadMagicByteError(SerdeError):
    code = "bad_magic_byte"


class TruncatedRecordError(SerdeError):
    code = "truncated_record"


class UnknownSchemaIdError(SerdeError):
    code = "unknown_schema_id"


class SchemaResolutionError(SerdeError):
    code = "schema_resolution_failed"


class UnknownEnumSymbolError(SchemaResolutionError):
    """The writer's enum has a symbol the reader's lacks (and the reader has no default)."""

    code = "unknown_enum_symbol"


class MalformedAvroError(SerdeError):
    code = "malformed_avro"


class EncodeError(SerdeError):
    code = "encode_failed"


class ConfluentAvroSerde:
    """Encodes and decodes one record type in the Confluent wire format.

    ``schema`` (plain Avro JSON) is the reader schema for decoding and the writer schema for
    encoding; it is registered under ``subject`` on the first encode and its id is cached.
    """

    def __init__(self, registry: SchemaRegistry, schema: Mapping[str, Any], subject: str | None = None):
        self._registry = registry
        self._schema_str = canonical(schema)
        self._reader_schema = fastavro.parse_schema(schema)
        self._subject = subject
        self._writer_schemas: dict[int, Any] = {}
        self._not_found: dict[int, tuple[float, str]] = {}  # schema id -> (monotonic expiry, the 404's message)
        self._own_schema_id: int | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_writer_schemas"] = {}
        state["_not_found"] = {}
        return state

    def _writer_schema(self, schema_id: int) -> Any:
        parsed = self._writer_schemas.get(schema_id)
        if parsed is None:
            known_missing = self._not_found.get(schema_id)
            if known_missing is not None and known_missing[0] > time.monotonic():
                raise UnknownSchemaIdError(known_missing[1])
            try:
                text = self._registry.schema_by_id(schema_id)
            except SchemaNotFoundError as err:
                self._not_found[schema_id] = (time.monotonic() + NOT_FOUND_TTL_SECONDS, str(err))
                raise UnknownSchemaIdError(str(err)) from err
            except RegistryUnavailableError:
                raise
            except Exception as err:  # any other registry failure (auth, a custom client's error): not the record's
                raise RegistryUnavailableError(f"registry lookup of schema id {schema_id} failed: {err}") from err
            try:
                parsed = fastavro.parse_schema(json.loads(text))
            except Exception as err:
                raise SchemaResolutionError(f"writer schema id {schema_id} is not valid Avro: {err}") from err
            self._writer_schemas[schema_id] = parsed
        return parsed

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decode one framed record into a dict shaped by the reader schema."""
        if len(data) < _HEADER.size:
            raise TruncatedRecordError(f"{len(data)} bytes is shorter than the 5-byte Confluent header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise BadMagicByteError(f"magic byte is {magic:#04x}, expected 0x00 (not Confluent Avro framing)")
        writer = self._writer_schema(schema_id)
        payload = io.BytesIO(data[_HEADER.size :])
        try:
            record = fastavro.schemaless_reader(payload, writer, self._reader_schema)
        except _FastavroResolutionError as err:
            if "not found in reader symbol list" in str(err):
                raise UnknownEnumSymbolError(f"writer schema id {schema_id}: {err}") from err
            raise SchemaResolutionError(
                f"writer schema id {schema_id} cannot be read as the reader schema: {err}"
            ) from err
        except Exception as err:
            # fastavro signals a cut payload as EOFError, StopIteration or IndexError, depending on the field.
            if isinstance(err, (EOFError, StopIteration)) or payload.tell() >= len(data) - _HEADER.size:
                raise TruncatedRecordError(f"Avro payload ended early for schema id {schema_id}") from err
            raise MalformedAvroError(f"Avro payload does not match writer schema id {schema_id}: {err!r}") from err
        trailing = len(data) - _HEADER.size - payload.tell()
        if trailing:
            raise MalformedAvroError(f"{trailing} unread bytes after the record (schema id {schema_id})")
        return record

    def schema_id(self) -> int:
        """The registry id of this serde's schema, registered under its subject on first use."""
        if self._own_schema_id is None:
            if not self._subject:
                raise EncodeError("encoding needs a subject to register the schema under")
            try:
                self._own_schema_id = self._registry.register(self._subject, self._schema_str)
            except RegistryUnavailableError:
                raise
            except Exception as err:  # refused (409 incompatible, 401) or unreachable: a deployment fault
                raise RegistryUnavailableError(f"registering {self._subject} failed: {err}") from err
        return self._own_schema_id

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Frame ``record`` (a dict in this serde's schema) with the registered schema id."""
        out = io.BytesIO()
        out.write(_HEADER.pack(MAGIC_BYTE, self.schema_id()))
        try:
            fastavro.schemaless_writer(out, self._reader_schema, record)
        except Exception as err:
            raise EncodeError(f"record does not fit schema {self._subject}: {err!r}") from err
        return out.getvalue()
