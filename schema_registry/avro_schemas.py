"""Avro schema handling for the registry: parsing, canonical text, default checks, compatibility.

Compatibility is decided by the Apache ``avro`` package's ``ReaderWriterCompatibilityChecker`` (the port
of Java Avro's ``SchemaCompatibility``), so the registry applies Avro's own resolution rules rather than
a re-implementation of them.
"""

import json
from dataclasses import dataclass
from typing import Any

import avro.errors
import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType, SchemaIncompatibilityType

#: Confluent's compatibility levels; BACKWARD is Confluent's default.
LEVELS = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
DEFAULT_LEVEL = "BACKWARD"


class InvalidSchemaError(ValueError):
    """The text is not a valid Avro schema (Confluent answers 422 / 42201)."""


@dataclass(frozen=True)
class ParsedSchema:
    """A parsed Avro schema and its canonical text (what the registry stores, compares and returns)."""

    schema: avro.schema.Schema
    canonical: str


def parse(text: str) -> ParsedSchema:
    """Parse ``text`` as Avro, check field defaults, and return it with its canonical text.

    The canonical text is the parsed schema written back compactly, so whitespace and key order in what
    clients send do not make two registrations of the same schema look different (Confluent does the same
    with Avro's ``Schema.toString()``); docs, defaults, aliases and logical types are kept.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidSchemaError("the schema is empty")
    try:
        parsed = avro.schema.parse(text)
    except (avro.errors.AvroException, json.JSONDecodeError, TypeError, ValueError) as err:
        raise InvalidSchemaError(f"Invalid schema: {err}") from err
    _check_defaults(parsed, set())
    return ParsedSchema(parsed, json.dumps(parsed.to_json(), separators=(",", ":")))


def _check_defaults(schema: avro.schema.Schema, seen: set[str]) -> None:
    """Reject field defaults that do not match the field's type, as Java Avro (and so Confluent) does."""
    if isinstance(schema, avro.schema.RecordSchema):
        if schema.fullname in seen:
            return
        seen.add(schema.fullname)
        for field in schema.fields:
            if field.has_default and not _default_fits(field.type, field.default):
                raise InvalidSchemaError(
                    f"Invalid default for field {field.name} in {schema.fullname}: "
                    f"{json.dumps(field.default)} is not a {_type_name(field.type)}"
                )
            _check_defaults(field.type, seen)
    elif isinstance(schema, avro.schema.ArraySchema):
        _check_defaults(schema.items, seen)
    elif isinstance(schema, avro.schema.MapSchema):
        _check_defaults(schema.values, seen)
    elif isinstance(schema, avro.schema.UnionSchema):
        for branch in schema.schemas:
            _check_defaults(branch, seen)


def _type_name(schema: avro.schema.Schema) -> str:
    return schema.fullname if isinstance(schema, avro.schema.NamedSchema) else str(schema.type)


def _default_fits(schema: avro.schema.Schema, value: Any) -> bool:
    """Whether a JSON default value encodes a value of ``schema`` (Avro spec, "Default values")."""
    kind = schema.type
    if isinstance(schema, avro.schema.UnionSchema):  # a union's default belongs to its first branch
        return bool(schema.schemas) and _default_fits(schema.schemas[0], value)
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("int", "long"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in ("float", "double"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in ("string", "bytes"):
        return isinstance(value, str)
    if kind == "fixed":
        return isinstance(value, str) and len(value) == schema.size
    if kind == "enum":
        return value in schema.symbols
    if kind == "array":
        return isinstance(value, list) and all(_default_fits(schema.items, v) for v in value)
    if kind == "map":
        return isinstance(value, dict) and all(_default_fits(schema.values, v) for v in value.values())
    if kind in ("record", "error"):
        if not isinstance(value, dict):
            return False
        return all(_default_fits(f.type, value[f.name]) if f.name in value else f.has_default for f in schema.fields)
    return True


def reader_writer_problems(
    reader: avro.schema.Schema, writer: avro.schema.Schema, reader_name: str = "reader", writer_name: str = "writer"
) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader``; empty when it can."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    kinds = ", ".join(sorted({i.name.upper() for i in result.incompatibilities})) or "INCOMPATIBLE"
    where = ", ".join(sorted(result.locations))
    detail = "; ".join(sorted(result.messages))
    if result.incompatibilities == [SchemaIncompatibilityType.reader_field_missing_default_value]:
        detail = (
            f"field(s) {detail} of the {reader_name} schema have no default and are missing in the {writer_name} schema"
        )
    description = f"the {reader_name} schema cannot read data written with the {writer_name} schema: {detail}"
    return [f"{{errorType:'{kinds}', description:'{description}', location:'{where}'}}"]


def compatibility_problems(
    level: str, new: avro.schema.Schema, previous: list[tuple[int, avro.schema.Schema]]
) -> list[str]:
    """Confluent's check of ``new`` against earlier versions ``previous`` (oldest first) under ``level``.

    Non-transitive levels compare with the latest earlier version only; ``*_TRANSITIVE`` with all of them.
    BACKWARD: the new schema reads data written with the old; FORWARD: the old reads the new; FULL: both.
    """
    if level == "NONE" or not previous:
        return []
    against = previous if level.endswith("_TRANSITIVE") else previous[-1:]
    base = level.removesuffix("_TRANSITIVE")
    problems: list[str] = []
    for version, old in reversed(against):
        found: list[str] = []
        if base in ("BACKWARD", "FULL"):
            found += reader_writer_problems(new, old, "new", "old")
        if base in ("FORWARD", "FULL"):
            found += reader_writer_problems(old, new, "old", "new")
        if found:
            problems += [*found, f"{{oldSchemaVersion: {version}}}", f"{{compatibility: '{level}'}}"]
    return problems
