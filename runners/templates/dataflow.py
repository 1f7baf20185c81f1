"""Dataflow Flex Template metadata (``metadata.json``) from a template's parameter spec, and its offline check.

``gcloud dataflow flex-template build --metadata-file metadata.json`` merges this file into the template
spec; Dataflow then checks every launch parameter against its ``regexes`` and passes it to the container's
entry point as ``--name=value``. The fields follow Google's documented format (template: name,
description, streaming, supportsAtLeastOnce, supportsExactlyOnce, defaultStreamingMode, parameters;
parameter: name, label, helpText, isOptional, regexes, paramType); ``FlexTemplateMetadata`` is that
format as a strict model, so a misspelt or missing field fails here rather than in Google's console.
Ranges cannot be regexes: they are in the help text and checked again by the spec at launch.
"""

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runners.templates.spec import Template

_UNSIGNED = r"^[0-9]+$"


class FlexParameter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9_]*$")
    label: str = Field(min_length=1)
    helpText: str = Field(min_length=1)  # noqa: N815 (Dataflow's field name)
    isOptional: bool = False  # noqa: N815
    regexes: list[str] = Field(default_factory=list)
    paramType: Literal["TEXT", "GCS_READ_FILE", "GCS_WRITE_FOLDER"] = "TEXT"  # noqa: N815

    @field_validator("regexes")
    @classmethod
    def _compile(cls, regexes: list[str]) -> list[str]:
        for regex in regexes:
            re.compile(regex)
        return regexes


class FlexTemplateMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    streaming: bool = False
    supportsAtLeastOnce: bool = False  # noqa: N815
    supportsExactlyOnce: bool = True  # noqa: N815
    defaultStreamingMode: Literal["AT_LEAST_ONCE", "EXACTLY_ONCE"] | None = None  # noqa: N815
    parameters: list[FlexParameter] = Field(default_factory=list)


def _parameter(name: str, field: dict[str, Any]) -> dict[str, Any]:
    kind = field.get("type") or next((t["type"] for t in field.get("anyOf", []) if t["type"] != "null"), "string")
    regexes = [field["pattern"]] if "pattern" in field else [_UNSIGNED] if kind == "integer" else []
    limits = [f"{word} {field[key]}" for key, word in (("minimum", "at least"), ("maximum", "at most")) if key in field]
    help_text = field["description"] + (f" ({', '.join(limits)})" if limits else "")
    if field.get("default") is not None:
        help_text += f" Default: {field['default']}."
    is_file = field.get("format") == "file-path" or any(t.get("format") == "file-path" for t in field.get("anyOf", []))
    return {
        "name": name,
        "label": name.replace("_", " ").capitalize(),
        "helpText": help_text,
        "isOptional": True,  # every parameter has a default
        "regexes": regexes,
        "paramType": "GCS_READ_FILE" if is_file else "TEXT",
    }


def flex_template_metadata(template: Template) -> dict[str, Any]:
    """The template's metadata.json content, checked against the documented format."""
    document = {
        "name": template.name,
        "description": f"{template.description} (template {template.version})",
        "streaming": template.streaming,
        # Outputs are written at least once (a restarted job re-reads the uncommitted tail).
        "supportsAtLeastOnce": True,
        "supportsExactlyOnce": True,
        "defaultStreamingMode": "AT_LEAST_ONCE",
        "parameters": [_parameter(name, field) for name, field in template.fields().items()],
    }
    return FlexTemplateMetadata.model_validate(document).model_dump()
