"""The registry's state, rebuilt by replaying its log records in order.

Every change is one record in the compacted ``_schemas`` topic; ``RegistryState.apply`` is the only way
the state changes, both while replaying the topic on start and after a write has been acknowledged, so
what a restarted registry knows is exactly what it had answered before.

Record keys (compaction keeps the latest value per key; a null value deletes):
- ``{"keytype": "SCHEMA", "subject": s, "version": v, "magic": 1}`` ->
  ``{"subject", "version", "id", "schema", "schemaType", "deleted"}``
- ``{"keytype": "CONFIG", "subject": s | null, "magic": 0}`` -> ``{"compatibilityLevel": level}``
- ``{"keytype": "ID_BOUND", "magic": 0}`` -> ``{"max_id": n}``: ids already handed out, so a schema that
  was permanently deleted (and compacted away) never has its id reused.
"""

import json
from dataclasses import dataclass, replace
from typing import Any

from schema_registry.avro_schemas import DEFAULT_LEVEL


@dataclass(frozen=True)
class Version:
    subject: str
    version: int
    id: int
    schema: str
    schema_type: str = "AVRO"
    deleted: bool = False

    def value(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "version": self.version,
            "id": self.id,
            "schema": self.schema,
            "schemaType": self.schema_type,
            "deleted": self.deleted,
        }


def encode(obj: dict[str, Any] | None) -> bytes | None:
    """JSON bytes of a record key or value (None stays None: a tombstone)."""
    return None if obj is None else json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def schema_key(subject: str, version: int) -> dict[str, Any]:
    return {"keytype": "SCHEMA", "subject": subject, "version": version, "magic": 1}


def config_key(subject: str | None) -> dict[str, Any]:
    return {"keytype": "CONFIG", "subject": subject, "magic": 0}


ID_BOUND_KEY = {"keytype": "ID_BOUND", "magic": 0}


class RegistryState:
    """Subjects, versions, global schema ids and compatibility config, in memory."""

    def __init__(self) -> None:
        self.subjects: dict[str, dict[int, Version]] = {}
        self.config: dict[str | None, str] = {}
        self.max_id = 0
        self._schema_by_id: dict[int, tuple[str, str]] = {}
        self._id_by_schema: dict[tuple[str, str], int] = {}

    # -- replay ------------------------------------------------------------------------------------------------

    def apply(self, key: dict[str, Any], value: dict[str, Any] | None) -> None:
        """Apply one log record; unknown key types are ignored (forward compatible log)."""
        keytype = key.get("keytype")
        if keytype == "SCHEMA":
            self._apply_schema(key["subject"], int(key["version"]), value)
        elif keytype == "CONFIG":
            if value is None:
                self.config.pop(key.get("subject"), None)
            else:
                self.config[key.get("subject")] = value["compatibilityLevel"]
        elif keytype == "ID_BOUND" and value is not None:
            self.max_id = max(self.max_id, int(value["max_id"]))

    def apply_raw(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        self.apply(json.loads(key), None if value is None else json.loads(value))

    def _apply_schema(self, subject: str, version: int, value: dict[str, Any] | None) -> None:
        versions = self.subjects.setdefault(subject, {})
        if value is None:
            old = versions.pop(version, None)
            if not versions:
                del self.subjects[subject]
            if old is not None:
                self._forget_if_unused(old.id)
            return
        entry = Version(
            subject=subject,
            version=version,
            id=int(value["id"]),
            schema=value["schema"],
            schema_type=value.get("schemaType", "AVRO"),
            deleted=bool(value.get("deleted", False)),
        )
        versions[version] = entry
        self.max_id = max(self.max_id, entry.id)
        self._schema_by_id[entry.id] = (entry.schema_type, entry.schema)
        self._id_by_schema.setdefault((entry.schema_type, entry.schema), entry.id)

    def _forget_if_unused(self, schema_id: int) -> None:
        if any(v.id == schema_id for vs in self.subjects.values() for v in vs.values()):
            return
        schema = self._schema_by_id.pop(schema_id, None)
        if schema is not None and self._id_by_schema.get(schema) == schema_id:
            del self._id_by_schema[schema]

    # -- queries -----------------------------------------------------------------------------------------------

    def schema_by_id(self, schema_id: int) -> tuple[str, str] | None:
        """``(schemaType, schema)`` of a global id (soft-deleted versions still resolve, as in Confluent)."""
        return self._schema_by_id.get(schema_id)

    def id_for(self, schema_type: str, canonical: str) -> int | None:
        return self._id_by_schema.get((schema_type, canonical))

    def next_id(self) -> int:
        return self.max_id + 1

    def versions(self, subject: str, include_deleted: bool = False) -> list[Version]:
        """The subject's versions, oldest first."""
        found = self.subjects.get(subject, {})
        return [found[v] for v in sorted(found) if include_deleted or not found[v].deleted]

    def subject_names(self, include_deleted: bool = False) -> list[str]:
        return sorted(s for s in self.subjects if self.versions(s, include_deleted))

    def next_version(self, subject: str) -> int:
        """Versions keep counting after deletes, like Confluent's."""
        return max(self.subjects.get(subject, {}) or [0]) + 1

    def level(self, subject: str | None) -> str:
        """The effective compatibility level: the subject's own, else the global one, else BACKWARD."""
        if subject is not None and subject in self.config:
            return self.config[subject]
        return self.config.get(None, DEFAULT_LEVEL)

    @staticmethod
    def soft_deleted(entry: Version) -> Version:
        return replace(entry, deleted=True)
